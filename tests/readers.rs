//! Many readers of one model through one mount: every open succeeds
//! whatever the others' open modes, every read returns all the bytes asked
//! for (or fails whole), and a full cache makes reads slower, not failed.

mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;

use support::*;

const MIB: u64 = 1 << 20;

/// One model `m` with one cold file of `size` bytes in 1 MiB chunks.
fn one_file(size: usize) -> (Workspace, RangeServer, Vec<u8>) {
    let ws = Workspace::new();
    let data = sample_bytes(size, 21);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("m", "m", &[format!("{}/m", server.url())], MIB)]);
    (ws, server, data)
}

/// A keeps a cold file open; B reads it whole, so it completes; C opens it
/// while A still has it: C's open must succeed (the kernel refuses a
/// passthrough open of an inode open in cached mode, so C must not get one).
fn open_after_completion(via_mmap: bool) {
    let (ws, _server, data) = one_file(4 * MIB as usize + 7);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);
    let path = m.path("m/w.bin");
    let read_all = |f: &File| -> Vec<u8> {
        if via_mmap {
            // SAFETY: a read-only mapping of a file nothing writes to.
            unsafe { memmap2::Mmap::map(f) }.unwrap().to_vec()
        } else {
            let mut buf = vec![0u8; data.len()];
            f.read_exact_at(&mut buf, 0).unwrap();
            buf
        }
    };
    let a = File::open(&path).unwrap();
    let mut first = [0u8; 4096];
    a.read_exact_at(&mut first, 0).unwrap();
    let b = File::open(&path).unwrap();
    assert!(read_all(&b) == data);
    drop(b);
    wait_for("the file to complete", || {
        ws.status()["models"][0]["state"] == "complete"
    });
    for _ in 0..3 {
        let c = File::open(&path).expect("an open while another has the file open");
        assert!(read_all(&c) == data);
    }
    drop(a);
    // Once the kernel has released every open (it does so after close(),
    // asynchronously), a new open is served by the kernel directly.
    let opens = |mode: &str| {
        let metrics = http_get(&addr, "/metrics").1;
        metric(&metrics, &format!("modelfs_opens_total{{mode=\"{mode}\"}}"))
    };
    wait_for("an open served by passthrough", || {
        let d = File::open(&path).unwrap();
        assert!(read_all(&d) == data);
        opens("passthrough") == 1.0
    });
    // A and B partial, the three Cs by modelfs (the first perhaps counted
    // partial: the file completes on disk a moment before in the mount).
    assert!(opens("partial") + opens("complete") >= 5.0);
}

#[test]
fn an_open_after_the_file_completed_under_another_open_succeeds() {
    open_after_completion(false);
}

#[test]
fn an_mmap_after_the_file_completed_under_another_open_succeeds() {
    open_after_completion(true);
}

/// A reader process: random `pread`s over `paths`, one line per read:
/// `FILE OFFSET ASKED GOT SHA256` (or `FILE OFFSET ASKED ERR errno`).
const READER: &str = r#"
import hashlib, os, random, sys
seed, count, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rng = random.Random(seed)
fds = [os.open(p, os.O_RDONLY) for p in paths]
sizes = [os.fstat(fd).st_size for fd in fds]
for _ in range(count):
    i = rng.randrange(len(fds))
    n = min(rng.randint(4096, 3 << 20), sizes[i])
    off = rng.randrange(sizes[i] - n + 1)
    try:
        got = os.pread(fds[i], n, off)
        print(i, off, n, len(got), hashlib.sha256(got).hexdigest(), flush=True)
    except OSError as e:
        print(i, off, n, "ERR", e.errno, flush=True)
"#;

/// What the readers saw.
#[derive(Default, Debug)]
struct Seen {
    reads: u64,
    failed: std::collections::BTreeMap<i32, u64>,
    short: u64,
    wrong: u64,
}

/// 16 reader processes over `files` through `m`, 60 reads each; every line checked.
fn sixteen_readers(m: &Mount, files: &[(String, Vec<u8>)]) -> Seen {
    let paths: Vec<_> = files.iter().map(|(rel, _)| m.path(rel)).collect();
    let children: Vec<_> = (0..16)
        .map(|seed| {
            std::process::Command::new("python3")
                .args(["-c", READER, &seed.to_string(), "60"])
                .args(&paths)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Seen::default();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a reader process failed");
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (i, off, n): (usize, usize, usize) = (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            );
            seen.reads += 1;
            if f[3] == "ERR" {
                *seen.failed.entry(f[4].parse().unwrap()).or_default() += 1;
                continue;
            }
            let got: usize = f[3].parse().unwrap();
            if got < n {
                seen.short += 1;
            }
            if f[4] != sha256_hex(&files[i].1[off..off + got]) {
                seen.wrong += 1;
            }
        }
    }
    seen
}

/// Three cold 8 MiB files on a server whose faults change while 16
/// processes read them, with a clean mirror behind it; `mount_args` adds a
/// quota or not. Every read must come back whole and right, and no file's
/// size, as `stat` shows it, may change.
fn many_readers(what: &str, mount_args: &[&str]) {
    use support::range_server::Fault;
    let ws = Workspace::new();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("m{i}/w.bin"),
                sample_bytes(8 * MIB as usize + 333 * i, 30 + i as u64),
            )
        })
        .collect();
    for (rel, data) in &files {
        let (model, name) = rel.split_once('/').unwrap();
        ws.add_file(model, name, data);
    }
    let faulty = RangeServer::start(&ws.models());
    let clean = RangeServer::start(&ws.models());
    let entries: Vec<_> = (0..3)
        .map(|i| {
            let m = format!("m{i}");
            let sources = [
                format!("{}/{m}", faulty.url()),
                format!("{}/{m}", clean.url()),
            ];
            ws.entry(&m, &m, &sources, MIB)
        })
        .collect();
    ws.write_manifest(&entries);
    let addr = free_addr();
    let mut args = vec!["--metrics-addr", &addr, "--read-timeout", "2"];
    args.extend_from_slice(mount_args);
    let m = Mount::start(&ws, &args);

    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        // The first source's fault changes every 100 ms while they read.
        s.spawn(|| {
            let modes = [
                Some(Fault::Status(503)),
                Some(Fault::ResetAfter(100_000)),
                Some(Fault::Corrupt),
                Some(Fault::ShortBody),
                None,
            ];
            let started = std::time::Instant::now();
            for mode in modes.iter().cycle() {
                if done.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() > DEADLINE {
                    break;
                }
                faulty.set_always(mode.clone());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        // stat never sees another size.
        let sizes = s.spawn(|| {
            let started = std::time::Instant::now();
            let mut checks = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < DEADLINE {
                for (rel, data) in &files {
                    assert_eq!(
                        std::fs::metadata(m.path(rel)).unwrap().len(),
                        data.len() as u64,
                        "the size of {rel} changed"
                    );
                    checks += 1;
                }
                // Paced, to leave the two cores to the readers.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            checks
        });
        let seen = sixteen_readers(&m, &files);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("readers: {what}: {} stat checks", sizes.join().unwrap());
        seen
    });
    let metrics = http_get(&addr, "/metrics").1;
    eprintln!(
        "readers: {what}: {} reads, failed {:?}, short {}, wrong {}; {:.1} MiB served uncached, {:.1} MiB fetched",
        seen.reads,
        seen.failed,
        seen.short,
        seen.wrong,
        metric(&metrics, "modelfs_uncached_bytes_total") / MIB as f64,
        (faulty.bytes_sent() + clean.bytes_sent()) as f64 / MIB as f64,
    );
    assert_eq!(seen.reads, 16 * 60);
    assert_eq!(seen.wrong, 0, "wrong bytes");
    assert_eq!(seen.short, 0, "short reads");
    assert!(seen.failed.is_empty(), "failed reads: {:?}", seen.failed);
}

#[test]
fn sixteen_processes_read_cold_files_whole_and_right() {
    many_readers("no quota", &[]);
}

#[test]
fn sixteen_processes_read_whole_and_right_from_a_cache_smaller_than_the_files() {
    many_readers("6 MiB quota", &["--max-cache-size", "6M"]);
}

/// A copy out of a mapped file touches the end of what it copies before its
/// start (glibc's memcpy loads the last vectors first), so a loader's page
/// faults jump a tensor ahead and come back, tensor after tensor. That is
/// still one sequential reader: its window keeps growing, its requests grow
/// with it, and no byte is asked for twice.
#[test]
fn a_reader_that_touches_each_tensors_end_first_is_still_sequential() {
    const TENSORS: u64 = 8;
    let size = TENSORS * 8 * MIB;
    let (ws, server, data) = one_file(size as usize);
    let m = Mount::start(&ws, &["--no-stream"]);
    let file = File::open(m.path("m/w.bin")).unwrap();
    let mut buf = vec![0; MIB as usize];
    for t in 0..TENSORS {
        let base = t * 8 * MIB;
        for i in std::iter::once(7).chain(0..8) {
            let at = base + i * MIB;
            file.read_exact_at(&mut buf, at).unwrap();
            assert!(
                buf == data[at as usize..(at + MIB) as usize],
                "bytes at {at}"
            );
        }
    }
    let mut asked: Vec<(u64, u64)> = server
        .request_log()
        .iter()
        .filter_map(|e| e.split(' ').nth(1)?.split_once('-'))
        .map(|(a, b)| (a.parse().unwrap(), b.parse::<u64>().unwrap() + 1))
        .collect();
    asked.sort_unstable();
    let mut next = 0;
    for &(first, end) in &asked {
        assert_eq!(first, next, "asked {asked:?}: a gap or a byte asked twice");
        next = end;
    }
    assert_eq!(next, size);
    let largest = asked.iter().map(|(a, b)| b - a).max().unwrap();
    // Reset at each tensor, it would ask a chunk at a time: 64 requests.
    assert!(
        largest >= 4 * MIB && asked.len() < 48,
        "the window never grew: {} requests, the largest {largest} bytes: {asked:?}",
        asked.len()
    );
}
