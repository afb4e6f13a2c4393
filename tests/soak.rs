//! A soak through real mounts: two mounts share one small cache (eviction
//! runs), readers `pread` and `mmap` random ranges of several models through
//! both, the first source's fault changes every few hundred milliseconds, one
//! mount is SIGKILLed and restarted every few seconds, and prefetches race it
//! all. Reads may fail and are counted by errno. What must hold: every byte a
//! read returned is the source's, no read comes back short or hangs, no
//! process panics, the mounts still running exit cleanly on SIGTERM, and with
//! the faults gone a fresh mount reads every model whole and `modelfs verify`
//! finds nothing bad.
//!
//! `MODELFS_SOAK_SECONDS` sets how long (default 20).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use support::range_server::Fault;
use support::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Model id, chunk size, files (path, size), and whether it is verified only whole.
type ModelSpec = (&'static str, usize, &'static [(&'static str, usize)], bool);

/// About 25 MiB in all, odd sizes so that last chunks are short.
const MODELS: [ModelSpec; 4] = [
    (
        "llama",
        MIB,
        &[("w.bin", 6 * MIB), ("config.bin", 2 * MIB + 12_345)],
        false,
    ),
    (
        "bert",
        256 * KIB,
        &[("w.bin", 5 * MIB - 777), ("sub/head.bin", 3 * MIB)],
        false,
    ),
    ("vit", MIB, &[("w.bin", 4 * MIB + 7)], true),
    (
        "t5",
        256 * KIB,
        &[("enc.bin", 3 * MIB + 1), ("dec.bin", 2 * MIB)],
        false,
    ),
];

/// About two models' worth, and at least the two largest files: eviction has
/// to run, yet one reader alone always fits.
const QUOTA: &str = "14M";

/// Short timeouts, so that no fault holds a reader for long.
const TIMEOUTS: [&str; 6] = [
    "--connect-timeout",
    "2",
    "--read-timeout",
    "2",
    "--request-timeout",
    "10",
];

const READERS: u64 = 4;

/// Mmaps the file named by argv[1] and prints the sha256 of each region
/// (offset, length pairs after it) as soon as it is read, so the regions read
/// before a SIGBUS are still checked. An error opening or mapping it prints
/// which step failed and its errno name.
const MMAP_READER: &str = r#"
import errno, hashlib, mmap, os, sys
step = "open"
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    step = "mmap"
    m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
except OSError as e:
    print(step, errno.errorcode.get(e.errno, e.errno))
    sys.exit(3)
at = [int(a) for a in sys.argv[2:]]
for off, n in zip(at[::2], at[1::2]):
    print(hashlib.sha256(m[off:off + n]).hexdigest(), flush=True)
"#;

/// One file of the soak, with what its source holds.
struct SoakFile {
    /// `<model id>/<path>`, under a mountpoint.
    rel: String,
    data: Vec<u8>,
}

/// xorshift64: the test's random choices, without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }

    /// A length from 4 KiB to 3 MiB, as likely small as large, at most `max`.
    fn read_len(&mut self, max: usize) -> usize {
        let base = (4 * KIB) << self.below(10);
        (base + self.below(base as u64) as usize)
            .min(3 * MIB)
            .min(max)
    }

    /// A random (offset, length) inside a file of `size` bytes.
    fn range_in(&mut self, size: usize) -> (usize, usize) {
        let len = self.read_len(size);
        (self.below((size - len + 1) as u64) as usize, len)
    }
}

/// What readers saw.
#[derive(Default)]
struct Stats {
    reads_ok: u64,
    mmap_regions_ok: u64,
    /// Bytes the readers asked for, whether they got them or not.
    bytes_asked: u64,
    /// Failed reads by how: "pread A read ENOTCONN", "mmap B SIGBUS", ...
    failed: BTreeMap<String, u64>,
    /// Wrong bytes, short reads, hangs: anything that fails the test.
    violations: Vec<String>,
}

impl Stats {
    fn fail(&mut self, how: String) {
        *self.failed.entry(how).or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        self.reads_ok += other.reads_ok;
        self.mmap_regions_ok += other.mmap_regions_ok;
        self.bytes_asked += other.bytes_asked;
        for (how, n) in other.failed {
            *self.failed.entry(how).or_default() += n;
        }
        self.violations.extend(other.violations);
    }
}

/// Counters of one mount process, from its `/metrics`.
#[derive(Clone, Copy, Default)]
struct Counters {
    evictions: f64,
    fetched: f64,
    verify_failures: f64,
    failovers: f64,
}

impl Counters {
    fn sample(addr: &str) -> Counters {
        let text = http_get(addr, "/metrics").1;
        Counters {
            evictions: metric_sum(&text, "modelfs_evictions_total"),
            fetched: metric_sum(&text, "modelfs_fetch_bytes_total"),
            verify_failures: metric_sum(&text, "modelfs_chunk_verify_failures_total"),
            failovers: metric_sum(&text, "modelfs_source_failovers_total"),
        }
    }

    fn add(&mut self, other: Counters) {
        self.evictions += other.evictions;
        self.fetched += other.fetched;
        self.verify_failures += other.verify_failures;
        self.failovers += other.failovers;
    }
}

/// The sum of every series of a metric, whatever its labels.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EIO) => "EIO",
        Some(libc::ENOTCONN) => "ENOTCONN",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EINTR) => "EINTR",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(n) => return format!("errno {n}"),
        None => return e.to_string(),
    };
    name.to_owned()
}

/// Where `got` differs from `want`, described; `None` if it does not.
fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    let at = got.iter().zip(want).position(|(g, w)| g != w)?;
    Some(format!(
        "first wrong byte at +{at}: got {:#04x}, want {:#04x}",
        got[at], want[at]
    ))
}

/// Reads `len` bytes at `off`, as many `pread`s as it takes: what arrived
/// before any error, and the error with the step that failed ("open", "read").
fn read_range(path: &Path, off: usize, len: usize) -> (Vec<u8>, Option<(&'static str, io::Error)>) {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return (Vec::new(), Some(("open", e))),
    };
    while got < len {
        match file.read_at(&mut buf[got..], (off + got) as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                buf.truncate(got);
                return (buf, Some(("read", e)));
            }
        }
    }
    buf.truncate(got);
    (buf, None)
}

/// Waits for a child, at most `DEADLINE`; `None` (and the child killed) if it hangs.
fn wait_bounded(mut child: Child) -> Option<Output> {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(child.wait_with_output().unwrap())
}

/// A mount and a file, at random.
fn pick<'a>(
    rng: &mut Rng,
    mounts: &'a [(&'static str, PathBuf); 2],
    files: &'a [SoakFile],
) -> (&'a (&'static str, PathBuf), &'a SoakFile) {
    let mount = &mounts[rng.below(2) as usize];
    (mount, &files[rng.below(files.len() as u64) as usize])
}

/// Random `pread`s through both mounts until `end`, each checked byte for byte.
fn pread_reader(
    mounts: [(&'static str, PathBuf); 2],
    files: Arc<Vec<SoakFile>>,
    end: Instant,
    mut rng: Rng,
) -> Stats {
    let mut st = Stats::default();
    while Instant::now() < end {
        let ((name, mnt), f) = pick(&mut rng, &mounts, &files);
        let (off, len) = rng.range_in(f.data.len());
        st.bytes_asked += len as u64;
        let (got, err) = read_range(&mnt.join(&f.rel), off, len);
        let what = || format!("pread {name} {} [{off}, +{len})", f.rel);
        if let Some(diff) = first_difference(&got, &f.data[off..off + got.len()]) {
            st.violations.push(format!("{}: {diff}", what()));
        }
        match err {
            Some((step, e)) => st.fail(format!("pread {name} {step} {}", errno_name(&e))),
            None if got.len() < len => {
                st.violations
                    .push(format!("{}: short read of {} bytes", what(), got.len()))
            }
            None => st.reads_ok += 1,
        }
    }
    st
}

/// Child processes that mmap a random file through either mount and hash
/// three random regions, until `end`. A SIGBUS (the mmap's way of failing a
/// read) kills only the child.
fn mmap_reader(
    mounts: [(&'static str, PathBuf); 2],
    files: Arc<Vec<SoakFile>>,
    end: Instant,
    mut rng: Rng,
) -> Stats {
    let mut st = Stats::default();
    while Instant::now() < end {
        let ((name, mnt), f) = pick(&mut rng, &mounts, &files);
        let regions: Vec<(usize, usize)> = (0..3).map(|_| rng.range_in(f.data.len())).collect();
        st.bytes_asked += regions.iter().map(|r| r.1 as u64).sum::<u64>();
        let child = Command::new("python3")
            .arg("-c")
            .arg(MMAP_READER)
            .arg(mnt.join(&f.rel))
            .args(
                regions
                    .iter()
                    .flat_map(|(o, l)| [o.to_string(), l.to_string()]),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the mmap readers");
        let what = format!("mmap {name} {} {regions:?}", f.rel);
        let Some(out) = wait_bounded(child) else {
            st.violations.push(format!("{what}: hung"));
            continue;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        if out.status.code() == Some(3) {
            st.fail(format!("mmap {name} {}", lines.join(" ")));
            continue;
        }
        for ((off, len), digest) in regions.iter().zip(&lines) {
            if *digest == sha256_hex(&f.data[*off..off + len]) {
                st.mmap_regions_ok += 1;
            } else {
                st.violations
                    .push(format!("{what}: region at {off} hashed to {digest}"));
            }
        }
        match (out.status.signal(), out.status.code()) {
            (Some(libc::SIGBUS), _) => st.fail(format!("mmap {name} SIGBUS")),
            (_, Some(0)) if lines.len() == regions.len() => {}
            _ => st
                .violations
                .push(format!("{what}: python exited with {}", out.status)),
        }
    }
    st
}

/// Cycles the first server's fault every 200..500 ms until `end`; how many changes.
fn fault_driver(server: Arc<RangeServer>, end: Instant, mut rng: Rng) -> u64 {
    let mut changes = 0;
    while Instant::now() < end {
        let fault = match changes % 7 {
            0 => Some(Fault::Status(503)),
            1 => Some(Fault::ResetAfter(rng.below(256 * KIB as u64))),
            2 => Some(Fault::ShortBody),
            3 => Some(Fault::Corrupt),
            4 => Some(Fault::ChangeEtag),
            5 => Some(Fault::IgnoreRange),
            _ => None,
        };
        server.set_always(fault);
        changes += 1;
        std::thread::sleep(rng.millis(200, 500));
    }
    server.set_always(None);
    changes
}

/// `modelfs prefetch` of a random model every 1..3 s until `end`, under the
/// live mounts' quota; outcomes counted ("ok", "ENOSPC", "failed"). Logs are
/// kept as `prefetch-N.log` for the panic check.
fn prefetcher(
    ws: Arc<Workspace>,
    end: Instant,
    mut rng: Rng,
) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut outcomes = BTreeMap::new();
    let mut hangs = Vec::new();
    for run in 0.. {
        std::thread::sleep(rng.millis(1000, 3000));
        if Instant::now() >= end {
            break;
        }
        let id = MODELS[rng.below(MODELS.len() as u64) as usize].0;
        let log = ws.path(&format!("prefetch-{run}.log"));
        let child = ws
            .modelfs()
            .args(["prefetch", id])
            .args(TIMEOUTS)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let Some(out) = wait_bounded(child) else {
            hangs.push(format!("prefetch {id}: hung"));
            continue;
        };
        let text = fs::read_to_string(&log).unwrap_or_default();
        let outcome = if out.status.success() {
            "ok"
        } else if text.contains("No space") || text.contains("cache full") {
            "ENOSPC"
        } else {
            "failed"
        };
        *outcomes.entry(outcome.to_owned()).or_default() += 1;
    }
    (outcomes, hangs)
}

/// The mount A restarts: its args with a fresh metrics address.
fn mount_a(ws: &Workspace, mnt: &Path) -> (Mount, String) {
    let addr = free_addr();
    let mut args = vec!["--max-cache-size", QUOTA, "--metrics-addr", &addr];
    args.extend(TIMEOUTS);
    (Mount::start_on(ws, mnt, &args, &[]), addr)
}

/// Every 2..4 s until `end`: samples mount A's counters, SIGKILLs it, lets
/// readers hit the dead mount for a moment, and starts it again on the same
/// mountpoint (the new mount clears the stale one). Returns the last mount
/// (and its metrics address), the killed ones (kept so that their drop does
/// not unmount the live one), and the killed ones' counters.
fn killer(
    ws: Arc<Workspace>,
    mnt: PathBuf,
    end: Instant,
    mut rng: Rng,
) -> ((Mount, String), Vec<Mount>, Counters) {
    let mut a = mount_a(&ws, &mnt);
    let mut killed = Vec::new();
    let mut counters = Counters::default();
    loop {
        let due = Instant::now() + rng.millis(2000, 4000);
        while Instant::now() < due.min(end) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if Instant::now() >= end {
            return (a, killed, counters);
        }
        counters.add(Counters::sample(&a.1));
        a.0.kill9();
        std::thread::sleep(rng.millis(100, 500));
        killed.push(std::mem::replace(&mut a, mount_a(&ws, &mnt)).0);
    }
}

/// What the logs in the workspace (the mounts' and the prefetches') say.
struct Logs {
    /// Lines that report a panic, with their log's name.
    panics: Vec<String>,
    /// FUSE opens and reads a mount failed because the cache was full.
    failed_cache_full: u64,
    /// FUSE opens and reads a mount failed for any other reason.
    failed_other: Vec<String>,
}

fn scan_logs(ws: &Workspace) -> Logs {
    let mut logs = Logs {
        panics: Vec::new(),
        failed_cache_full: 0,
        failed_other: Vec::new(),
    };
    for entry in fs::read_dir(ws.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for line in fs::read_to_string(&path).unwrap().lines() {
            let failed = line.contains("read failed") || line.contains("open failed");
            if line.contains("panicked") {
                logs.panics.push(format!("{name}: {line}"));
            } else if failed && line.contains("cache full") {
                logs.failed_cache_full += 1;
            } else if failed {
                logs.failed_other.push(format!("{name}: {line}"));
            }
        }
    }
    logs
}

/// Fails the test, keeping the workspace (logs, cache, models) to look into.
fn fail_keeping(ws: Arc<Workspace>, msg: String) -> ! {
    let kept = Arc::into_inner(ws).map(|ws| ws.dir.keep());
    panic!("{msg}\nworkspace kept at {kept:?}");
}

/// Joins `handle`, which must finish by `by`.
fn join_by<T>(handle: JoinHandle<T>, by: Instant, what: &str) -> T {
    while !handle.is_finished() {
        assert!(Instant::now() < by, "{what} hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    handle.join().unwrap()
}

#[test]
fn soak_many_readers_faults_kills_and_eviction_never_serve_a_wrong_byte() {
    let seconds: u64 = std::env::var("MODELFS_SOAK_SECONDS").ok().map_or(20, |s| {
        s.parse().expect("MODELFS_SOAK_SECONDS: whole seconds")
    });
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let ws = Arc::new(Workspace::new());
    let mut files = Vec::new();
    for (i, (id, _, model_files, _)) in MODELS.iter().enumerate() {
        for (j, (path, size)) in model_files.iter().enumerate() {
            let data = sample_bytes(*size, 100 + 10 * i as u64 + j as u64);
            ws.add_file(id, path, &data);
            files.push(SoakFile {
                rel: format!("{id}/{path}"),
                data,
            });
        }
    }
    let files = Arc::new(files);
    let model_bytes: usize = files.iter().map(|f| f.data.len()).sum();
    let faulty = Arc::new(RangeServer::start(&ws.models()));
    let clean = RangeServer::start(&ws.models());
    let entries: Vec<String> = MODELS
        .iter()
        .map(|(id, chunk, _, whole_only)| {
            let sources = [faulty.url(), clean.url()].map(|u| format!("{u}/{id}"));
            let entry = ws.entry(id, id, &sources, *chunk as u64);
            if *whole_only {
                without_chunk_hashes(&entry)
            } else {
                entry
            }
        })
        .collect();
    ws.write_manifest(&entries);

    let b_addr = free_addr();
    let mut b_args = vec!["--max-cache-size", QUOTA, "--metrics-addr", &b_addr];
    b_args.extend(TIMEOUTS);
    let b = Mount::start_on(&ws, &ws.path("b"), &b_args, &[]);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mounts = [("A", ws.path("a")), ("B", ws.path("b"))];
    let killer = {
        let (ws, mnt) = (Arc::clone(&ws), mounts[0].1.clone());
        std::thread::spawn(move || killer(ws, mnt, end, Rng::new(seed)))
    };
    let driver = {
        let faulty = Arc::clone(&faulty);
        std::thread::spawn(move || fault_driver(faulty, end, Rng::new(seed + 1)))
    };
    let prefetch = {
        let ws = Arc::clone(&ws);
        std::thread::spawn(move || prefetcher(ws, end, Rng::new(seed + 2)))
    };
    let mmap = {
        let (mounts, files) = (mounts.clone(), Arc::clone(&files));
        std::thread::spawn(move || mmap_reader(mounts, files, end, Rng::new(seed + 3)))
    };
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (mounts, files) = (mounts.clone(), Arc::clone(&files));
            std::thread::spawn(move || pread_reader(mounts, files, end, Rng::new(seed + 4 + i)))
        })
        .collect();

    // A read in flight at the end may still wait out its retries.
    let by = end + DEADLINE;
    let ((a, a_addr), killed, mut counters) = join_by(killer, by, "the killer");
    let kills = killed.len();
    let fault_changes = join_by(driver, by, "the fault driver");
    let (prefetches, hangs) = join_by(prefetch, by, "a prefetch");
    let mut stats = Stats {
        violations: hangs,
        ..Stats::default()
    };
    stats.merge(join_by(mmap, by, "an mmap reader"));
    for r in readers {
        stats.merge(join_by(r, by, "a pread reader"));
    }
    let soaked = started.elapsed();

    counters.add(Counters::sample(&a_addr));
    counters.add(Counters::sample(&b_addr));
    // Both must exit 0 on SIGTERM (Mount's drop checks); then no stale mount is left.
    drop(a);
    drop(b);
    drop(killed);
    if !stats.violations.is_empty() {
        let first = &stats.violations[..stats.violations.len().min(20)];
        let msg = format!(
            "{} violations:\n{}",
            stats.violations.len(),
            first.join("\n")
        );
        fail_keeping(ws, msg);
    }

    // Faults off: a fresh mount under the same quota reads everything right.
    let fresh = Mount::start(&ws, &["--max-cache-size", QUOTA]);
    let wrong: Vec<String> = files
        .iter()
        .filter_map(|f| match fs::read(fresh.path(&f.rel)) {
            Ok(got) => first_difference(&got, &f.data)
                .or((got.len() != f.data.len()).then(|| format!("{} bytes", got.len())))
                .map(|diff| format!("{} after the soak: {diff}", f.rel)),
            Err(e) => Some(format!("{} after the soak: {e}", f.rel)),
        })
        .collect();
    drop(fresh);
    if !wrong.is_empty() {
        fail_keeping(ws, wrong.join("\n"));
    }
    let verify = ws.modelfs().arg("verify").output().unwrap();
    if !verify.status.success() {
        let out = String::from_utf8_lossy(&verify.stdout).into_owned();
        fail_keeping(ws, format!("modelfs verify failed after the soak:\n{out}"));
    }
    let logs = scan_logs(&ws);
    if !logs.panics.is_empty() {
        fail_keeping(ws, logs.panics.join("\n"));
    }

    for line in logs.failed_other.iter().take(5) {
        eprintln!("soak: failed for a cause other than a full cache: {line}");
    }
    let mib = |b: f64| b / MIB as f64;
    println!(
        "soak: {:.0}s (seed {seed}), reads ok: {} pread + {} mmap regions, \
         reads failed: {:?} (the mounts' logs: {} opens/reads failed on a full cache, \
         {} otherwise), kills {kills}, fault changes {fault_changes}, \
         prefetch runs {prefetches:?}, evictions {}, verify failures {}, failovers {}, \
         fetched {:.1} MiB by the mounts (servers sent {:.1} MiB) \
         for {:.1} MiB asked by readers of {:.1} MiB of models",
        soaked.as_secs_f64(),
        stats.reads_ok,
        stats.mmap_regions_ok,
        stats.failed,
        logs.failed_cache_full,
        logs.failed_other.len(),
        counters.evictions,
        counters.verify_failures,
        counters.failovers,
        mib(counters.fetched),
        mib((faulty.bytes_sent() + clean.bytes_sent()) as f64),
        mib(stats.bytes_asked as f64),
        mib(model_bytes as f64),
    );
    // Every source fault has a healthy source behind it, and a full cache
    // serves reads from memory: no read fails but on the mount being killed.
    assert!(
        logs.failed_other.is_empty() && logs.failed_cache_full == 0,
        "the mounts failed reads"
    );
    let b_failed: Vec<_> = stats.failed.keys().filter(|k| k.contains(" B ")).collect();
    assert!(b_failed.is_empty(), "mount B's reads failed: {b_failed:?}");
    assert!(kills >= 1, "mount A was never killed");
    assert!(counters.evictions >= 1.0, "nothing was evicted");
    assert!(fault_changes >= 5, "the faults hardly changed");
    assert!(
        stats.reads_ok >= 10 * seconds && stats.mmap_regions_ok >= 3,
        "too few reads succeeded to mean anything"
    );
}
