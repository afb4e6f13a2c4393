//! `modelfs mount` and `modelfs umount`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use fuser::{MountOption, Session, SessionACL};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use super::follow::{Follower, Seen, Stamp, Why};
use super::{
    CacheArg, ManifestArg, QuotaArg, SignatureArgs, SourceArgs, UsageError, daemon, init_logging,
    open_cache,
};
use crate::cache::Cache;
use crate::fetch::Fetcher;
use crate::fs::fuse::{FuseAdapter, watch_cache};
use crate::fs::{Layout, ModelFs, StreamConfig};
use crate::manifest::Manifest;
use crate::metrics::{self, Metrics, http::Endpoint};
use crate::signature::Trust;

#[derive(Args)]
pub struct MountArgs {
    /// An existing empty directory to mount the tree on.
    mountpoint: PathBuf,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    cache: CacheArg,
    #[command(flatten)]
    signatures: SignatureArgs,
    /// Use a new cache that is deleted at unmount: in $TMPDIR, or at
    /// --cache-dir DIR, which must not exist yet.
    #[arg(long)]
    ephemeral: bool,
    /// Return once the mount is ready and keep serving in the background.
    #[arg(long)]
    daemon: bool,
    /// Where a daemon logs [default: CACHE_DIR/mount.log].
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Let other users read the tree (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    allow_other: bool,
    /// How the tree shows the models: `models` (MOUNTPOINT/<model id>/<path>), or `hf`,
    /// a Hugging Face hub cache (MOUNTPOINT/models--<org>--<name>/...), so that
    /// HF_HUB_CACHE=MOUNTPOINT HF_HUB_OFFLINE=1 makes huggingface_hub, transformers and
    /// diffusers read through it unchanged.
    #[arg(long, value_enum, default_value = "models")]
    layout: LayoutArg,
    /// Serve GET /metrics (Prometheus) and GET /healthz (JSON) on this address, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Do not stream models. By default, once a reader has read 4 MiB in a row
    /// of a weight file (over 1 MiB), the files a loader reads with it (the
    /// other shards its index JSON names, or its NAME-0000k-of-0000n
    /// siblings, and each other directory's set, as a diffusers pipeline
    /// has; never another copy of the model) are fetched whole
    /// into the cache at the link's full speed, behind every reader's own
    /// requests. A model with `stream = false` in the manifest never streams.
    #[arg(long)]
    no_stream: bool,
    /// Seconds every file of a model must stay closed before its stream stops.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = super::parse_seconds)]
    stream_grace: Duration,
    /// How often a manifest named by URL is asked whether it changed (a
    /// conditional request: an unchanged one sends no body). A manifest file
    /// is watched whatever this says (its metadata, twice a second). 0: only
    /// SIGHUP or `modelfs reload` reload either.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = super::parse_seconds_or_zero)]
    manifest_refresh: Duration,
    #[command(flatten)]
    quota: QuotaArg,
    #[command(flatten)]
    sources: SourceArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LayoutArg {
    Models,
    Hf,
}

pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    // Before the fork is fine: the daemon's fd 2 becomes its log file.
    init_logging("info");
    // An ephemeral cache keeps no copy of a manifest named by URL.
    let keep_in = (!args.ephemeral)
        .then(|| args.cache.resolve().ok())
        .flatten();
    // Looked at before the file is read: a change after this is seen.
    let path = args.manifest.path()?;
    let stamp = super::remote::location(&path)
        .is_none()
        .then(|| Stamp::of(&path))
        .flatten();
    let loaded = args
        .manifest
        .load_in(keep_in.as_deref(), Some(&args.sources))?;
    let seen = Seen {
        looked: stamp.clone(),
        served: stamp,
        etag: loaded.etag,
        text: loaded.text,
    };
    let (manifest, stale) = (Arc::new(loaded.manifest), loaded.stale);
    let mountpoint = prepare_mountpoint(&args.mountpoint)?;
    // Bad key files are said now, not in the daemon's log.
    let trust = args.signatures.trust()?;
    let ephemeral = args
        .ephemeral
        .then(|| EphemeralCache::create(&args.cache))
        .transpose()?;
    let cache_arg = ephemeral
        .as_ref()
        .map_or_else(|| args.cache.clone(), EphemeralCache::arg);
    let cache = open_cache(&cache_arg, &args.quota, &manifest)?;
    let ready = if args.daemon {
        let log = args
            .log_file
            .clone()
            .unwrap_or_else(|| cache.root().join("mount.log"));
        Some(
            daemon::daemonize(&log)
                .with_context(|| format!("cannot start daemon (log {})", log.display()))?,
        )
    } else {
        None
    };
    let mut ready = ready;
    let result = serve(
        &args,
        (manifest, stale, seen),
        trust,
        cache,
        &mountpoint,
        &mut ready,
    );
    if let (Err(e), Some(ready)) = (&result, ready) {
        ready.fail(&format!("{e:#}"));
    }
    result
}

/// Mounts, reports readiness, and serves until a signal or an unmount.
/// `manifest` comes with why it is a kept copy, if it is (see `remote`),
/// and what it was read from.
fn serve(
    args: &MountArgs,
    (manifest, stale, seen): (Arc<Manifest>, Option<String>, Seen),
    trust: Trust,
    cache: Arc<Cache>,
    mountpoint: &Path,
    ready: &mut Option<daemon::Ready>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("modelfs-io")
        .build()
        .context("cannot start the async runtime")?;
    // A quota lowered since the last mount applies now, not at the next fetch.
    match cache.reserve(0, || Ok(())) {
        Ok(0) => {}
        Ok(n) => info!(evicted = n, "evicted files to fit the cache's quota"),
        Err(e) => warn!(error = %e, "the cache is over its quota"),
    }
    let metrics = Arc::new(Metrics::new());
    metrics.catalog_loaded(
        &args.manifest.path()?.to_string_lossy(),
        manifest.models.len(),
        stale,
    );
    // What /healthz says: not mounted until the kernel has the mount.
    let mounted = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.metrics_addr {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let endpoint = Arc::new(Endpoint::new(
            Arc::clone(&metrics),
            Arc::clone(&cache),
            Arc::clone(&mounted),
        ));
        runtime.spawn(metrics::http::serve(listener, endpoint));
        info!(%addr, "serving /metrics and /healthz");
    }
    let sources = args.sources.build()?;
    let fetcher = Arc::new(Fetcher::new(
        Arc::clone(&cache),
        sources,
        args.sources.retry(),
        Arc::clone(&metrics),
    ));
    let mtime = std::fs::metadata(args.manifest.path()?)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let signatures =
        super::signatures(trust, args.sources.timeouts(), &cache, Arc::clone(&metrics))?;
    let core = ModelFs::new(
        manifest,
        Arc::clone(&cache),
        Arc::clone(&fetcher),
        runtime.handle().clone(),
        match args.layout {
            LayoutArg::Models => Layout::Models,
            LayoutArg::Hf => Layout::Hf,
        },
        StreamConfig {
            enabled: !args.no_stream,
            grace: args.stream_grace,
        },
    );
    let core = Arc::new(core.with_signatures(signatures));
    crate::fs::give_back_freed_memory();
    let adapter = FuseAdapter::new(Arc::clone(&core), runtime.handle().clone(), mtime);

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("modelfs".into()),
        MountOption::Subtype("modelfs".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    // A request waits for a thread of ours to wake; on a VM that costs
    // tens of microseconds unless one happens to wait on the requester's
    // CPU. More threads waiting make that likelier: a cold `ls -lR` of
    // 10,000 models took 2.03 s with 1, 1.62 s with 2, 1.43 s with 4 and
    // 1.32 s with 8 (16: no better). Idle ones cost 100 KB or so each.
    config.n_threads = Some(FUSE_THREADS);
    // Before the mount exists: a SIGTERM the moment it is up must unmount,
    // not kill the process with its default action.
    let (mut term, mut int, mut hup) = {
        let _runtime = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        )
    };
    let notifier = adapter.notifier_slot();
    let watching = adapter.watching_flag();
    let mut session = Session::new(adapter, mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    let follower = Arc::new(Follower::new(
        args.manifest.path()?,
        args.manifest.local_root(),
        (!args.ephemeral).then(|| cache.root()),
        &args.sources,
        Arc::clone(&core),
        session.notifier(),
        Arc::clone(&metrics),
        seen,
    )?);
    if !args.manifest_refresh.is_zero() {
        let follower = Arc::clone(&follower);
        match follower.is_remote() {
            true => runtime.spawn(follower.poll_url(args.manifest_refresh)),
            false => runtime.spawn(follower.watch_file()),
        };
    }
    if let Err(e) = watch_cache(core, session.notifier(), cache.root(), watching) {
        warn!(error = %e, "cannot watch the cache: files' attributes are asked for again each second");
    }
    let mut unmounter = session.unmount_callable();
    raise_readahead(mountpoint);
    mounted.store(true, Ordering::Release);
    let mut record = MountRecord::create(&cache, mountpoint, &args.manifest.path()?);
    info!(mountpoint = %mountpoint.display(), cache = %cache.root().display(), "ready");
    if let Some(ready) = ready.take() {
        ready.ok();
    }
    notify_systemd("READY=1");

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .context("cannot start the FUSE thread")?;
    let outcome = runtime.block_on(async {
        let mut tick = tokio::time::interval(RECORD_FIGURES_EVERY);
        loop {
            tokio::select! {
                _ = term.recv() => break Some("SIGTERM"),
                _ = int.recv() => break Some("SIGINT"),
                _ = hup.recv() => {
                    follower.asked();
                    let follower = Arc::clone(&follower);
                    tokio::spawn(async move { follower.reload(Why::Asked).await });
                }
                _ = &mut done_rx => break None,
                _ = tick.tick() => record.show(&cache, &[
                    ("streams", metrics.streams_json()),
                    ("sources", serde_json::json!(metrics.sources())),
                    ("catalog", serde_json::json!(metrics.catalog())),
                ]),
            }
        }
    });
    mounted.store(false, Ordering::Release);
    notify_systemd("STOPPING=1");
    if let Some(signal) = outcome {
        info!(signal, "unmounting");
        if let Err(e) = unmounter.unmount() {
            // Busy (files open): detach now; the kernel finishes when they close.
            warn!(error = %e, "unmount failed; detaching lazily");
            lazy_unmount(mountpoint)?;
        }
        // The session ends once the kernel has let go of the mount.
        let ended = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), done_rx).await });
        if ended.is_err() {
            warn!("FUSE session still busy after unmount; exiting anyway");
        }
    }
    let unchecked = runtime.block_on(fetcher.finish_deferred(FINISH_AT_END));
    if unchecked > 0 {
        warn!(
            files = unchecked,
            "unmounted before every whole-file check ended; each runs at the file's next open"
        );
    }
    drop(record);
    runtime.shutdown_timeout(Duration::from_secs(1));
    info!("unmounted");
    Ok(())
}

const FUSE_THREADS: usize = 8;

/// How long an unmount waits for the whole-file checks deferred while
/// loaders loaded (about 1.5 GB/s of hashing per core).
const FINISH_AT_END: Duration = Duration::from_secs(10);

/// A sequential reader's kernel readahead, and so each FUSE read request,
/// is 128 KiB by default: eight requests (and replies) per MiB. The kernel
/// takes up to 1 MiB per request (`max_pages_limit`, 256 pages), so the
/// mount's readahead is raised to that, through its backing device's
/// `read_ahead_kb`. Best effort: only root may write it.
const READAHEAD_KB: u32 = 1024;

fn raise_readahead(mountpoint: &Path) {
    // From mountinfo, not stat: a stat of the mountpoint would wait on this
    // very file system.
    let Some(mounted) = mounted_at(mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", mounted.device);
    match std::fs::write(&knob, READAHEAD_KB.to_string()) {
        Ok(()) => info!(kb = READAHEAD_KB, "raised the mount's readahead"),
        Err(e) => {
            warn!(%knob, error = %e, "cannot raise the mount's readahead; reads go in 128 KiB requests")
        }
    }
}

/// Tells systemd how the mount is doing (`Type=notify` units): a datagram to
/// `$NOTIFY_SOCKET`, a path or, with a leading `@`, an abstract socket.
/// Without the variable there is no one to tell.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = target.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(Path::new(&target)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        warn!(error = %e, state, "cannot notify systemd through NOTIFY_SOCKET");
    }
}

/// Checks the mountpoint, cleaning up a stale mount a killed modelfs left.
fn prepare_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    let abs =
        std::path::absolute(path).with_context(|| format!("bad mountpoint {}", path.display()))?;
    if let Some(mounted) = mounted_at(&abs) {
        // statfs always reaches the FUSE server (stat may be answered from
        // cached attributes), so it tells a dead connection from a live one.
        match crate::fileio::statvfs(&abs) {
            Err(e)
                if mounted.is_ours()
                    && matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) =>
            {
                warn!(mountpoint = %abs.display(), "cleaning up a stale mount (its process died)");
                lazy_unmount(&abs)?;
            }
            _ => bail!("{} is already mounted; unmount it first", abs.display()),
        }
    }
    match std::fs::metadata(&abs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(UsageError(format!("mountpoint {} does not exist", abs.display())).into())
        }
        Err(e) => Err(e).with_context(|| format!("mountpoint {}", abs.display())),
        Ok(m) if !m.is_dir() => {
            Err(UsageError(format!("mountpoint {} is not a directory", abs.display())).into())
        }
        Ok(_) => Ok(abs),
    }
}

pub fn umount(path: &Path, lazy: bool) -> anyhow::Result<()> {
    let abs = ours(path)?;
    let c = cpath(&abs)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount(c.as_ptr()) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // Busy, or not root (EPERM): a detach goes through the setuid helper.
    if lazy {
        return lazy_unmount(&abs);
    }
    if err.raw_os_error() == Some(libc::EBUSY) {
        bail!(
            "{} is busy: a process has files open under it (close them, or `modelfs umount --lazy` to detach)",
            abs.display()
        );
    }
    // Not root: the setuid helper may unmount what this user mounted.
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&abs)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(err).with_context(|| format!("cannot unmount {}", abs.display())),
    }
}

/// The absolute path of `path`, a modelfs mount; a usage error if it is
/// not one.
pub(super) fn ours(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    match mounted_at(&abs) {
        None => Err(UsageError(format!("{} is not mounted", abs.display())).into()),
        Some(m) if !m.is_ours() => Err(UsageError(format!(
            "{} is a {} mount of {}, not a modelfs one",
            abs.display(),
            m.fs_type,
            m.source
        ))
        .into()),
        Some(_) => Ok(abs),
    }
}

fn lazy_unmount(path: &Path) -> anyhow::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!("cannot detach the mount at {}", path.display()),
    }
}

fn cpath(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")
}

/// What is mounted at a path, from /proc/self/mountinfo.
struct Mounted {
    /// `major:minor` of the mount's device.
    device: String,
    /// `fuse` (or `fuse.modelfs` where the subtype is kept) for ours.
    fs_type: String,
    /// The source field: `modelfs` for ours (the FSName we mount with).
    source: String,
}

impl Mounted {
    fn is_ours(&self) -> bool {
        self.source == "modelfs" && (self.fs_type == "fuse" || self.fs_type == "fuse.modelfs")
    }
}

/// What is mounted at `path`; `None` if nothing is.
fn mounted_at(path: &Path) -> Option<Mounted> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    // The kernel escapes these four characters in paths as octal.
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    // Later lines are newer mounts: the last one at a path is on top.
    info.lines().rev().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        if unescape(fields.get(4)?) != want {
            return None;
        }
        let mut fs = fs.split(' ');
        Some(Mounted {
            device: fields.get(2)?.to_string(),
            fs_type: fs.next()?.to_owned(),
            source: fs.next().unwrap_or_default().to_owned(),
        })
    })
}

/// `--ephemeral`: a cache directory of this mount's own, removed when it
/// ends (after everything in it was closed). A `kill -9` leaves it behind,
/// in $TMPDIR unless --cache-dir put it elsewhere. A daemon's default log
/// is in it too: pass --log-file to keep the log.
struct EphemeralCache(PathBuf);

impl EphemeralCache {
    fn create(given: &CacheArg) -> anyhow::Result<EphemeralCache> {
        let dir = match &given.cache_dir {
            Some(dir) if dir.exists() => {
                return Err(UsageError(format!(
                    "--ephemeral deletes its cache at unmount, so --cache-dir {} must not exist yet",
                    dir.display()
                ))
                .into());
            }
            Some(dir) => dir.clone(),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                std::env::temp_dir()
                    .join(format!("modelfs-ephemeral-{}-{nanos}", std::process::id()))
            }
        };
        // create_dir, not create_dir_all: never adopt (and later delete) an existing directory.
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(EphemeralCache(dir))
    }

    fn arg(&self) -> CacheArg {
        CacheArg {
            cache_dir: Some(self.0.clone()),
        }
    }
}

impl Drop for EphemeralCache {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => info!(cache = %self.0.display(), "removed the ephemeral cache"),
            Err(e) => {
                warn!(cache = %self.0.display(), error = %e, "cannot remove the ephemeral cache")
            }
        }
    }
}

/// How often a mount's record is brought up to date with its streams and sources.
const RECORD_FIGURES_EVERY: Duration = Duration::from_secs(1);

/// `CACHE/mounts/<name>`: tells `modelfs status` which mounts use the cache,
/// how their model streams are doing and what their sources show. Removed when the mount ends; a
/// record nobody holds locked is a dead mount's.
pub struct MountRecord {
    held: Option<(PathBuf, std::fs::File)>,
    body: serde_json::Value,
}

impl MountRecord {
    /// Writes `CACHE/mounts/<name>` and holds an exclusive `flock` on it for
    /// as long as the mount lives: readers tell a live mount by the lock,
    /// which (unlike a pid) dies with its process, whatever pid namespace
    /// it ran in and whoever gets its pid next.
    fn create(cache: &Cache, mountpoint: &Path, manifest: &Path) -> MountRecord {
        let body = serde_json::json!({
            "max_cache_size": cache.quota().max_bytes,
            "pid": std::process::id(),
            "mountpoint": mountpoint,
            "manifest": match super::remote::location(manifest) {
                Some(_) => manifest.to_owned(),
                None => std::path::absolute(manifest).unwrap_or_else(|_| manifest.to_owned()),
            },
        });
        let written = || -> io::Result<(PathBuf, std::fs::File)> {
            let dir = cache.root().join("mounts");
            crate::cache::files::ensure_dir(&dir)?;
            for old in std::fs::read_dir(&dir)?.flatten() {
                if !crate::cache::files::is_locked(&old.path())? {
                    crate::cache::files::remove(&old.path())?;
                }
            }
            let (file, tmp) = cache.temp_file(&crate::hash::Digest([0; 32]))?;
            let path = dir.join(tmp.file_name().expect("temp files have names"));
            Ok((path.clone(), publish_locked(file, &tmp, &path, &body)?))
        };
        match written() {
            Ok(held) => MountRecord {
                held: Some(held),
                body,
            },
            Err(e) => {
                warn!(error = %e, "cannot record this mount in the cache; status will not list it");
                MountRecord { held: None, body }
            }
        }
    }

    /// Replaces the record with one that shows these figures (by key), if
    /// they changed.
    fn show(&mut self, cache: &Cache, figures: &[(&str, serde_json::Value)]) {
        let Some((path, _)) = &self.held else { return };
        if figures.iter().all(|(key, v)| self.body.get(key) == Some(v)) {
            return;
        }
        for (key, value) in figures {
            self.body[key] = value.clone();
        }
        let replaced = cache
            .temp_file(&crate::hash::Digest([0; 32]))
            .and_then(|(file, tmp)| publish_locked(file, &tmp, path, &self.body));
        match replaced {
            // The old file's lock goes with it: the name now holds the new one.
            Ok(file) => self.held = Some((path.clone(), file)),
            Err(e) => debug!(error = %e, "cannot update this mount's record"),
        }
    }
}

/// Writes `body` to the new file `tmp`, locks it and renames it to `path`:
/// records are locked before they get their name, so one that is not locked
/// is a dead mount's, and a reader sees the old record or the new one, whole.
fn publish_locked(
    mut file: std::fs::File,
    tmp: &Path,
    path: &Path,
    body: &serde_json::Value,
) -> io::Result<std::fs::File> {
    io::Write::write_all(&mut file, body.to_string().as_bytes())?;
    file.lock()?;
    std::fs::rename(tmp, path)?;
    Ok(file)
}

impl Drop for MountRecord {
    fn drop(&mut self) {
        if let Some((path, _locked)) = &self.held {
            let _ = std::fs::remove_file(path);
        }
    }
}
