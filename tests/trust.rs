//! Trust under sharing: whatever manifests, other processes or a hostile
//! cache directory do, a byte read through the mount is the file's byte,
//! and one stuck operation never freezes the mount.

mod support;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use support::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Preads `len` bytes at `offset` and checks them against `data`.
fn assert_pread(path: &std::path::Path, data: &[u8], offset: u64, len: usize) {
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("pread {} at {offset}: {e}", path.display()));
    assert!(
        buf == data[offset as usize..offset as usize + len],
        "{} at {offset}: wrong bytes",
        path.display()
    );
}

/// One file listed by two models with other chunkings (2 MiB and 256 KiB):
/// the common case of two teams writing manifests for one base model.
fn two_geometries() -> (Workspace, RangeServer, Vec<u8>, [String; 2]) {
    let ws = Workspace::new();
    let data = sample_bytes(6 * MIB as usize + 12345, 8);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    let url = vec![format!("{}/m", server.url())];
    let entries = [
        ws.entry("m", "big", &url, 2 * MIB),
        ws.entry("m", "small", &url, 256 * KIB),
    ];
    (ws, server, data, entries)
}

#[test]
fn two_chunkings_of_one_file_serve_only_its_bytes() {
    let (ws, _server, data, entries) = two_geometries();
    ws.write_manifest(&entries);
    {
        let m = ws.mount();
        // Interleaved, so each entry finds chunks the other verified.
        assert_pread(&m.path("big/w.bin"), &data, 0, 4096);
        assert_pread(
            &m.path("small/w.bin"),
            &data,
            2 * MIB + 100,
            64 * KIB as usize,
        );
        assert_pread(&m.path("small/w.bin"), &data, 5 * MIB, 300 * KIB as usize);
        assert_pread(&m.path("big/w.bin"), &data, 4 * MIB + 7, MIB as usize);
        assert_eq!(fs::read(m.path("small/w.bin")).unwrap(), data);
        assert_eq!(fs::read(m.path("big/w.bin")).unwrap(), data);
    }
    // What the cache kept is right for both, in later mounts of either alone.
    for entry in &entries {
        ws.write_manifest(std::slice::from_ref(entry));
        let m = ws.mount();
        let id = if entry.contains("\"big\"") {
            "big"
        } else {
            "small"
        };
        assert_eq!(fs::read(m.path(&format!("{id}/w.bin"))).unwrap(), data);
    }
}

#[test]
fn two_mounts_with_other_chunkings_of_one_file_share_a_cache_safely() {
    let (ws, server, data, [big, small]) = two_geometries();
    server.set_rate(8 * MIB);
    let manifest_of = |name: &str, entry: &str| -> PathBuf {
        let path = ws.path(name);
        fs::write(&path, format!("version = 1\n\n{entry}")).unwrap();
        path
    };
    let a = Mount::start(
        &ws,
        &["--manifest", manifest_of("a.toml", &big).to_str().unwrap()],
    );
    let b = Mount::start_on(
        &ws,
        &ws.path("mnt2"),
        &[
            "--manifest",
            manifest_of("b.toml", &small).to_str().unwrap(),
        ],
        &[],
    );
    let readers: Vec<_> = [a.path("big/w.bin"), b.path("small/w.bin")]
        .into_iter()
        .map(|p| std::thread::spawn(move || fs::read(p).unwrap()))
        .collect();
    for r in readers {
        assert!(r.join().unwrap() == data, "a reader got wrong bytes");
    }
    for offset in [0, MIB + 3, 2 * MIB, 6 * MIB] {
        assert_pread(&a.path("big/w.bin"), &data, offset, 12345);
        assert_pread(&b.path("small/w.bin"), &data, offset, 12345);
    }
    // Each chunking kept its own state: neither started the other's afresh.
    for m in [&a, &b] {
        assert!(!m.log_text().contains("does not match"), "{}", m.log_text());
    }
}

/// A cache to be tampered with: one model `m` with one file, its manifest
/// entry, and a directory outside the cache whose content must never change.
struct Hostile {
    ws: Workspace,
    _server: RangeServer,
    data: Vec<u8>,
    outside: PathBuf,
}

impl Hostile {
    fn new(chunk_hashes: bool) -> Hostile {
        let ws = Workspace::new();
        let data = sample_bytes(MIB as usize + 3, 9);
        ws.add_file("m", "w.bin", &data);
        let server = RangeServer::start(&ws.models());
        let entry = ws.entry("m", "m", &[format!("{}/m", server.url())], 256 * KIB);
        let entry = if chunk_hashes {
            entry
        } else {
            without_chunk_hashes(&entry)
        };
        ws.write_manifest(&[entry]);
        let outside = ws.path("outside");
        fs::create_dir_all(&outside).unwrap();
        // As large as the file, so that only content could tell them apart.
        fs::write(outside.join("precious"), vec![b'p'; data.len()]).unwrap();
        Hostile {
            ws,
            _server: server,
            data,
            outside,
        }
    }

    fn blob_dir(&self) -> PathBuf {
        let hex = sha256_hex(&self.data);
        self.ws.cache().join("blobs").join(&hex[..2])
    }

    fn blob(&self, suffix: &str) -> PathBuf {
        self.blob_dir()
            .join(format!("{}{suffix}", sha256_hex(&self.data)))
    }

    /// `blobs/ab/<sha256>.<layout>.partial`, as the library names it.
    fn partial(&self) -> PathBuf {
        let manifest =
            modelfs::manifest::Manifest::load(&self.ws.path("manifest.toml"), None).unwrap();
        let key = modelfs::cache::BlobKey::of(&manifest.models[0].files[0]);
        self.blob(&format!(".{}.partial", key.tag()))
    }

    fn plant(&self, at: &std::path::Path, target: &std::path::Path) {
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, at).unwrap();
    }

    /// Everything under `outside/`, as it was made.
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["precious"], "nothing was added outside the cache");
        assert!(
            fs::read(self.outside.join("precious")).unwrap() == vec![b'p'; self.data.len()],
            "the file outside the cache changed"
        );
    }

    /// Reading through a mount fails with EIO, and the log says why.
    fn assert_read_refused(&self, what: &str) {
        let m = self.ws.mount();
        let err = fs::read(m.path("m/w.bin")).expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{what}: {err}");
        let log = m.log_text();
        assert!(
            log.contains("refusing") && log.contains("symbolic link"),
            "{what}: the log does not say why:\n{log}"
        );
        self.assert_outside_untouched();
    }
}

#[test]
fn a_symlink_planted_as_a_complete_file_is_never_served() {
    let h = Hostile::new(true);
    h.plant(&h.blob(""), &h.outside.join("precious"));
    h.assert_read_refused("complete file");
}

#[test]
fn a_symlink_planted_as_a_partial_file_is_never_written_through() {
    let h = Hostile::new(true);
    h.plant(&h.partial(), &h.outside.join("precious"));
    h.assert_read_refused("partial file");
}

#[test]
fn a_symlinked_blob_directory_is_refused() {
    let h = Hostile::new(true);
    h.plant(&h.blob_dir(), &h.outside);
    h.assert_read_refused("blob directory");
}

#[test]
fn a_temp_name_planted_ahead_of_a_download_is_skipped() {
    let h = Hostile::new(false);
    let m = h.ws.mount();
    // The names this mount will try for its whole-file download.
    for n in 0..4 {
        h.plant(
            &h.ws
                .cache()
                .join(format!("tmp/{}.{}.{n}", sha256_hex(&h.data), m.pid())),
            &h.outside.join("precious"),
        );
    }
    assert!(fs::read(m.path("m/w.bin")).unwrap() == h.data);
    h.assert_outside_untouched();
}

#[test]
fn model_trees_never_delete_or_write_through_a_symlink() {
    let h = Hostile::new(true);
    // models/ itself a link: refused.
    h.plant(&h.ws.cache().join("models"), &h.outside);
    let out = h.ws.modelfs().args(["prefetch", "m"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refusing"), "{err}");
    h.assert_outside_untouched();
    // models/m a link to a directory: the link is replaced, not what it names.
    fs::remove_file(h.ws.cache().join("models")).unwrap();
    h.plant(&h.ws.cache().join("models/m"), &h.outside);
    h.ws.run_ok(&["prefetch".as_ref(), "m".as_ref()]);
    h.assert_outside_untouched();
    let tree = h.ws.cache().join("models/m");
    assert!(fs::symlink_metadata(&tree).unwrap().is_dir());
    assert!(fs::read(tree.join("w.bin")).unwrap() == h.data);
}

#[test]
fn a_cache_dir_other_users_can_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let h = Hostile::new(true);
    fs::set_permissions(h.ws.cache(), fs::Permissions::from_mode(0o777)).unwrap();
    let out =
        h.ws.modelfs()
            .args(["mount".as_ref(), h.ws.mnt().as_os_str()])
            .output()
            .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("chmod go-w"), "{err}");
    assert!(!is_live_fuse(&h.ws.mnt()));
}

/// Runs `f` on a thread: how long it took and what it returned; fails
/// the test if it takes longer than the suite's deadline.
fn within_deadline<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> (std::time::Duration, T) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = std::time::Instant::now();
    std::thread::spawn(move || tx.send(f()));
    let out = rx
        .recv_timeout(DEADLINE)
        .expect("stalled past the deadline");
    (started.elapsed(), out)
}

/// A shell command, bounded: how long it took and whether it succeeded.
fn timed(command: &str) -> (std::time::Duration, bool) {
    let command = command.to_owned();
    within_deadline(move || {
        std::process::Command::new("sh")
            .args(["-c", &format!("{command} >/dev/null")])
            .status()
            .unwrap()
            .success()
    })
}

/// Data for a file whose blob lands in the same `blobs/ab/` directory as
/// the file with digest `hex`.
fn data_sharing_a_blob_dir_with(hex: &str) -> Vec<u8> {
    (0..100_000)
        .map(|seed| sample_bytes(64 * KIB as usize, seed))
        .find(|d| sha256_hex(d)[..2] == hex[..2])
        .expect("one in 256 seeds matches")
}

#[test]
fn a_cache_dir_locked_by_another_process_does_not_stall_the_mount() {
    let ws = Workspace::new();
    let cold = sample_bytes(MIB as usize, 10);
    let hex = sha256_hex(&cold);
    let warm = data_sharing_a_blob_dir_with(&hex);
    ws.add_file("cold", "w.bin", &cold);
    ws.add_file("warm", "w.bin", &warm);
    let server = RangeServer::start(&ws.models());
    let url = |m: &str| vec![format!("{}/{m}", server.url())];
    ws.write_manifest(&[
        ws.entry("cold", "cold", &url("cold"), 256 * KIB),
        ws.entry("warm", "warm", &url("warm"), 256 * KIB),
    ]);
    ws.run_ok(&["prefetch".as_ref(), "warm".as_ref()]);
    let m = ws.mount();

    // Another process (here, this one) holds the lock of the blob
    // directory both files live in, as a slow publish or eviction would.
    let dir = File::open(ws.cache().join("blobs").join(&hex[..2])).unwrap();
    dir.lock().unwrap();
    let cold_path = m.path("cold/w.bin");
    let opener = std::thread::spawn(move || fs::read(cold_path));

    // Each bounded: a stalled mount fails the test, it does not hang it.
    let (listing, listed) = timed(&format!("ls -lR {}", m.mountpoint.display()));
    assert!(listed, "ls -lR failed");
    let warm_path = m.path("warm/w.bin");
    let (cached_read, right) = within_deadline(move || fs::read(warm_path).unwrap() == warm);
    assert!(right, "the cached read returned wrong bytes");
    eprintln!(
        "trust: with a blob directory locked elsewhere: ls -lR {:.1} ms, cached read {:.1} ms",
        listing.as_secs_f64() * 1e3,
        cached_read.as_secs_f64() * 1e3
    );
    assert!(
        !opener.is_finished(),
        "the cold open waits for the lock, as it must"
    );
    dir.unlock().unwrap();
    assert!(opener.join().unwrap().unwrap() == cold);
}

/// A pid that no process has now.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn liveness_is_a_held_lock_not_a_pid() {
    let h = Hostile::new(true);
    let ws = &h.ws;
    // A record left by a killed mount whose pid now belongs to another
    // process (pid 1 lives, as reused pids do); its quota would refuse all.
    fs::create_dir_all(ws.cache().join("mounts")).unwrap();
    fs::write(
        ws.cache().join("mounts/1"),
        r#"{"pid": 1, "max_cache_size": 1, "mountpoint": "/gone", "manifest": "/gone.toml"}"#,
    )
    .unwrap();
    assert_eq!(ws.status()["mounts"].as_array().unwrap().len(), 0);
    // A download in progress whose pid looks dead (another pid namespace's).
    let download = ws
        .cache()
        .join(format!("tmp/{}.{}.0", sha256_hex(&h.data), dead_pid()));
    fs::create_dir_all(download.parent().unwrap()).unwrap();
    let held = File::create(&download).unwrap();
    held.lock_shared().unwrap();

    ws.run_ok(&["prefetch".as_ref(), "m".as_ref()]);
    assert!(download.exists(), "a locked download was swept");
    drop(held);
    ws.run_ok(&["prefetch".as_ref(), "m".as_ref()]);
    assert!(!download.exists(), "a dead process's download stayed");

    // A live mount is listed, and its record goes with it.
    let m = ws.mount();
    let mounts = ws.status()["mounts"].as_array().unwrap().clone();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0]["pid"], m.pid());
    assert!(
        !ws.cache().join("mounts/1").exists(),
        "the dead record was swept"
    );
}

#[test]
fn a_file_whose_chunks_verify_but_whole_does_not_is_refused_and_remembered() {
    let ws = Workspace::new();
    let data = sample_bytes(MIB as usize + 5, 11);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    let entry = ws.entry("m", "m", &[format!("{}/m", server.url())], 256 * KIB);
    // Chunk hashes right, file hash wrong: the manifest contradicts itself.
    let wrong = sha256_hex(b"another file");
    ws.write_manifest(&[entry.replace(&sha256_hex(&data), &wrong)]);
    {
        let m = ws.mount();
        // Every chunk verifies, so reads are served until the whole-file
        // check (in the background, once all chunks are in) fails.
        if let Ok(read) = fs::read(m.path("m/w.bin")) {
            assert!(read == data);
        }
        // (Pages the kernel already holds may still be served by this mount:
        // they verified chunk by chunk.)
        wait_for("the whole-file check", || {
            m.log_text().contains("the manifest is inconsistent")
        });
    }
    // Remembered across mounts: refused at once, nothing fetched or hashed again.
    server.reset_counters();
    let m = ws.mount();
    let err = fs::read(m.path("m/w.bin")).map(drop).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(server.requests(), 0);
    assert!(m.log_text().contains("inconsistent"), "{}", m.log_text());
    assert_eq!(ws.status()["models"][0]["cached_bytes"], 0);
}
