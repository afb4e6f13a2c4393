//! Shared by the end-to-end tests: sample models, manifests, and real mounts
//! of the `modelfs` binary that clean up after themselves even when a test fails.

#![allow(dead_code)] // each test binary uses a different part

pub mod range_server;
pub mod s3_server;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use modelfs::manifest::{BuildOptions, build_entry};
#[allow(unused_imports)] // not every test binary serves files
pub use range_server::RangeServer;
use sha2::{Digest as _, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_modelfs");
/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn sample_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Polls `cond` until it holds or `DEADLINE` passes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests mount FUSE and must run as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE is required"
    );
}

const INHERITED_ENV_CLEARED: [&str; 13] = [
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// A manifest entry as `manifest build` wrote it, less its chunk hashes:
/// the file is then verified only whole.
pub fn without_chunk_hashes(entry: &str) -> String {
    entry
        .split_inclusive('\n')
        .filter(|l| !(l.starts_with("chunks") || l.starts_with("  \"") || l.starts_with(']')))
        .collect()
}

/// A scratch area: model files under `models/`, a cache, a mountpoint.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        for sub in ["models", "cache", "mnt"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Workspace { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn models(&self) -> PathBuf {
        self.path("models")
    }

    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    pub fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }

    /// Writes `data` as `models/<model>/<rel>`.
    pub fn add_file(&self, model: &str, rel: &str, data: &[u8]) {
        let p = self.models().join(model).join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// A manifest entry for `models/<model>` with the given base URLs.
    pub fn entry(&self, model: &str, id: &str, sources: &[String], chunk_size: u64) -> String {
        let opts = BuildOptions {
            id: id.into(),
            sources: sources.to_vec(),
            chunk_size: Some(chunk_size),
            description: None,
        };
        build_entry(&self.models().join(model), &opts).unwrap()
    }

    /// Writes `version = 1` and the entries as `manifest.toml`.
    pub fn write_manifest(&self, entries: &[String]) -> PathBuf {
        let path = self.path("manifest.toml");
        fs::write(&path, manifest_text(entries)).unwrap();
        path
    }

    pub fn modelfs(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("MODELFS_CACHE_DIR", self.cache())
            .env("MODELFS_MANIFEST", self.path("manifest.toml"))
            .stdin(Stdio::null());
        // Only what a test sets: never the developer's credentials or proxy.
        for var in INHERITED_ENV_CLEARED {
            c.env_remove(var).env_remove(var.to_lowercase());
        }
        // Nor the profile in ~/.aws: files that do not exist.
        for var in ["AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"] {
            c.env(var, self.path("no-such-aws-file"));
        }
        c
    }

    /// Runs `modelfs ARGS...`, which must succeed; its standard output.
    pub fn run_ok(&self, args: &[&std::ffi::OsStr]) -> String {
        let out = self.modelfs().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "modelfs {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `modelfs status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.modelfs().args(["status", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Verified bytes of one model according to `modelfs status`.
    pub fn cached_bytes(&self, model: &str) -> u64 {
        let status = self.status();
        let models = status["models"].as_array().unwrap();
        let m = models
            .iter()
            .find(|m| m["id"] == model)
            .expect("model in status");
        m["cached_bytes"].as_u64().unwrap()
    }

    pub fn mount(&self) -> Mount {
        Mount::start(self, &[])
    }
}

/// A native manifest of these `[[model]]` entries.
pub fn manifest_text(entries: &[String]) -> String {
    format!("version = 1\n\n{}", entries.join("\n"))
}

/// Whether anything (a stale mount included) is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Whether a FUSE server answers at `path`: a stale mount fails statfs
/// with ENOTCONN, a plain directory has another file system type.
pub fn is_live_fuse(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid path and a buffer of the right type.
    let ok = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) } == 0;
    // SAFETY: statfs filled the buffer when it returned 0.
    ok && unsafe { buf.assume_init() }.f_type == FUSE_SUPER_MAGIC
}

/// A foreground `modelfs mount` process. Dropping it unmounts (SIGTERM, then
/// SIGKILL and a lazy unmount if it does not go).
pub struct Mount {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

impl Mount {
    pub fn start(ws: &Workspace, extra: &[&str]) -> Mount {
        Self::start_with_env(ws, extra, &[])
    }

    pub fn start_with_env(ws: &Workspace, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        Self::start_on(ws, &ws.mnt(), extra, env)
    }

    /// A mount at `mountpoint` (created if missing) on the workspace's cache.
    pub fn start_on(
        ws: &Workspace,
        mountpoint: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        // May fail on a stale mount (a killed process's): the mount clears it.
        let _ = fs::create_dir_all(mountpoint);
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let log = ws.path(&format!(
            "mount-{}.log",
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let child = ws
            .modelfs()
            .arg("mount")
            .arg(mountpoint)
            .args(extra)
            .env(
                "MODELFS_LOG",
                "debug,reqwest=info,hyper=info,hyper_util=info",
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mount {
            child: Some(child),
            mountpoint: mountpoint.to_owned(),
            log,
        };
        let start = Instant::now();
        while !is_live_fuse(&m.mountpoint) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mount exited with {status} before it was ready:\n{}",
                    m.log_text()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "mount not ready in time:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "mount did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the mount is left stale, as after a crash.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.signal_and_wait(libc::SIGTERM);
            if !status.success() && !std::thread::panicking() {
                panic!("mount exited with {status}:\n{}", self.log_text());
            }
        }
        if is_mounted(&self.mountpoint) {
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid path; a lazy unmount of our own test mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if std::thread::panicking() {
            eprintln!(
                "--- mount log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// The value of extended attribute `name` of `path`, which must have it.
pub fn xattr(path: &std::path::Path, name: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        len >= 0,
        "getxattr {name}: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(len as usize);
    String::from_utf8(buf).unwrap()
}

/// A loopback address with a port free at the time of the call.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A mount's `/healthz` at `addr`, parsed.
pub fn healthz(addr: &str) -> serde_json::Value {
    serde_json::from_str(&http_get(addr, "/healthz").1).unwrap()
}

/// The value of one Prometheus series (exact name with labels), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Every reservation of cache space the mount logs record, as (bytes, the
/// most the cache could hold once it was made). modelfs logs each one.
pub fn reservations(mounts: &[&Mount]) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    mounts
        .iter()
        .flat_map(|m| {
            m.log_text()
                .lines()
                .filter(|l| l.contains("reserved room in the cache"))
                .map(|l| (field(l, "bytes"), field(l, "usage_bound")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs a Python snippet; the test fails with its stderr if it does.
pub fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect(
            "python3 is needed for loader tests (.ci/run installs it with safetensors and numpy)",
        );
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
