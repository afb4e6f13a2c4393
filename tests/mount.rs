//! End to end through the kernel: a real `modelfs mount` process, real reads,
//! and an HTTP range server on 127.0.0.1 that counts what was fetched.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use support::range_server::Fault;
use support::*;

const MIB: u64 = 1 << 20;

/// A workspace with one model of `size` bytes served by a fresh server.
fn single_model(size: usize, chunk: u64) -> (Workspace, RangeServer, Vec<u8>) {
    let ws = Workspace::new();
    let data = sample_bytes(size, 1);
    ws.add_file("m", "weights.bin", &data);
    let server = RangeServer::start(&ws.models());
    let url = format!("{}/m", server.url());
    ws.write_manifest(&[ws.entry("m", "m@1", &[url], chunk)]);
    (ws, server, data)
}

#[test]
fn listing_and_stat_need_no_network() {
    let ws = Workspace::new();
    ws.add_file(
        "a",
        "model.safetensors",
        &sample_bytes(3 * MIB as usize + 5, 2),
    );
    ws.add_file("a", "tokenizer/vocab.json", b"{}");
    ws.add_file("b", "w.bin", &sample_bytes(1000, 3));
    // Nothing listens on port 1: any fetch would fail.
    let dead = "http://127.0.0.1:1/x".to_string();
    ws.write_manifest(&[
        ws.entry("a", "llama@fp16", std::slice::from_ref(&dead), MIB),
        ws.entry("b", "t2v-A14B@2.2.0", &[dead], MIB),
    ]);
    let m = ws.mount();

    let mut models: Vec<_> = fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    models.sort();
    assert_eq!(models, ["llama@fp16", "t2v-A14B@2.2.0"]);
    let st = fs::metadata(m.path("llama@fp16/model.safetensors")).unwrap();
    assert_eq!(st.len(), 3 * MIB + 5);
    assert_eq!(st.blocks(), 0, "nothing is cached yet");
    assert_eq!(st.mode() & 0o777, 0o444);
    assert!(
        fs::metadata(m.path("llama@fp16/tokenizer"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        fs::metadata(m.path("llama@fp16/tokenizer/vocab.json"))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        fs::metadata(m.path("nope")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let du = std::process::Command::new("du")
        .args(["-sb", "--apparent-size"])
        .arg(m.path("llama@fp16"))
        .output()
        .unwrap();
    let apparent: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(apparent >= 3 * MIB + 7, "du --apparent-size saw {apparent}");
    assert_eq!(
        xattr(
            &m.path("llama@fp16/model.safetensors"),
            "user.modelfs.sha256"
        ),
        sha256_hex(&sample_bytes(3 * MIB as usize + 5, 2))
    );

    // A read has nowhere to fetch from: EIO, promptly, and the mount lives on.
    let started = Instant::now();
    let err = fs::read(m.path("t2v-A14B@2.2.0/w.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        m.log_text().contains("127.0.0.1:1/x/w.bin"),
        "log names the source"
    );
    assert_eq!(fs::read_dir(&m.mountpoint).unwrap().count(), 2);
}

/// A partial file is read with direct I/O: each read reaches modelfs (the
/// kernel keeps no pages of it to drop before a passthrough open), readers
/// are told to read in 1 MiB blocks, and a shared map of it still works.
#[test]
fn partial_files_are_read_directly_and_can_be_mapped() {
    let size = 8 * MIB as usize;
    let (ws, _server, data) = single_model(size, MIB);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);
    let path = m.path("m@1/weights.bin");
    assert_eq!(fs::metadata(&path).unwrap().blksize(), MIB);
    let reads = || {
        metric(
            &http_get(&addr, "/metrics").1,
            "modelfs_fuse_ops_total{op=\"read\"}",
        )
    };
    let file = File::open(&path).unwrap();
    let mut buf = vec![0; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    let before = reads();
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..], &data[..4096]);
    assert_eq!(
        reads(),
        before + 1.0,
        "the second read of a page reached modelfs"
    );

    // SAFETY: a read-only shared map of an open file, unmapped below; the
    // file's bytes do not change.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(
        mapped,
        libc::MAP_FAILED,
        "{}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `size` bytes are mapped at `mapped`.
    let bytes = unsafe { std::slice::from_raw_parts(mapped as *const u8, size) };
    assert!(bytes == &data[..], "the map shows the file's bytes");
    // SAFETY: mapped above, and `bytes` is not used after.
    assert_eq!(unsafe { libc::munmap(mapped, size) }, 0);
}

#[test]
fn cold_read_is_verified_and_warm_rereads_fetch_nothing() {
    let size = 24 * MIB as usize + 12345;
    let (ws, server, data) = single_model(size, MIB);
    {
        let addr = free_addr();
        let m = Mount::start(&ws, &["--metrics-addr", &addr]);
        let read = fs::read(m.path("m@1/weights.bin")).unwrap();
        assert_eq!(sha256_hex(&read), sha256_hex(&data));
        let fetched = server.bytes_sent();
        assert!(
            fetched >= size as u64 && fetched <= size as u64 + MIB,
            "fetched {fetched} for {size}"
        );
        server.reset_counters();
        // Every chunk is verified: the reread is the kernel's, by
        // passthrough, whether or not the whole-file check is done yet.
        let ops = |op: &str| {
            metric(
                &http_get(&addr, "/metrics").1,
                &format!("modelfs_fuse_ops_total{{op=\"{op}\"}}"),
            )
        };
        wait_for("the kernel to release the first open", || {
            ops("release") >= 1.0
        });
        let reads = ops("read");
        assert_eq!(fs::read(m.path("m@1/weights.bin")).unwrap(), data);
        assert_eq!(server.bytes_sent(), 0, "warm reread in the same mount");
        assert_eq!(ops("read"), reads, "the reread reached modelfs");
        assert_eq!(
            metric(
                &http_get(&addr, "/metrics").1,
                "modelfs_opens_total{mode=\"passthrough\"}"
            ),
            1.0
        );
        wait_for("st_blocks to show the cached file", || {
            fs::metadata(m.path("m@1/weights.bin")).unwrap().blocks() * 512 >= size as u64
        });
    }
    // The cache survives the unmount: a new mount serves from it, and the
    // kernel reads the cache file directly (passthrough), not through us.
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);
    assert_eq!(fs::read(m.path("m@1/weights.bin")).unwrap(), data);
    assert_eq!(server.bytes_sent(), 0, "warm reread after remount");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&metrics, "modelfs_opens_total{mode=\"passthrough\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "modelfs_fuse_ops_total{op=\"read\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(ws.status()["models"][0]["state"], "complete");
}

#[test]
fn a_deep_small_read_fetches_only_a_few_chunks() {
    let (ws, server, data) = single_model(64 * MIB as usize, MIB);
    let m = ws.mount();
    let f = File::open(m.path("m@1/weights.bin")).unwrap();
    let offset = 50 * MIB + 12345;
    let mut buf = [0u8; 4096];
    f.read_exact_at(&mut buf, offset).unwrap();
    assert_eq!(&buf[..], &data[offset as usize..offset as usize + 4096]);
    let fetched = server.bytes_sent();
    assert!(fetched <= 3 * MIB, "a 4 KiB read fetched {fetched} bytes");
}

#[test]
fn concurrent_readers_of_a_cold_file_fetch_each_chunk_once() {
    let size = 32 * MIB as usize;
    let (ws, server, data) = single_model(size, MIB);
    let m = ws.mount();
    let expected = sha256_hex(&data);
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let path = m.path("m@1/weights.bin");
            std::thread::spawn(move || {
                // Each reader has its own descriptor and starts at a different place.
                let f = File::open(path).unwrap();
                let mut buf = vec![0u8; size];
                let start = i * size / 4;
                for (from, to) in [(start, size), (0, start)] {
                    f.read_exact_at(&mut buf[from..to], from as u64).unwrap();
                }
                sha256_hex(&buf)
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), expected);
    }
    let fetched = server.bytes_sent();
    assert!(
        fetched <= size as u64 + size as u64 / 10,
        "4 readers fetched {fetched} bytes of a {size}-byte file"
    );
}

#[test]
fn a_corrupting_source_is_never_served_and_the_next_completes_it() {
    let ws = Workspace::new();
    let data = sample_bytes(8 * MIB as usize, 4);
    ws.add_file("m", "w.bin", &data);
    let bad = RangeServer::start(&ws.models());
    bad.set_always(Some(Fault::Corrupt));
    let good = RangeServer::start(&ws.models());
    let sources = [format!("{}/m", bad.url()), format!("{}/m", good.url())];
    ws.write_manifest(&[ws.entry("m", "m", &sources, MIB)]);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);
    assert_eq!(
        sha256_hex(&fs::read(m.path("m/w.bin")).unwrap()),
        sha256_hex(&data)
    );
    assert!(bad.requests() > 0, "the corrupting source was tried first");
    assert!(good.bytes_sent() >= data.len() as u64);
    assert!(m.log_text().contains("chunk hash mismatch"));

    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    // At least three chunks fail at the bad source; then it is tried last.
    let chunks = 3.0;
    assert!(
        metric(&text, "modelfs_chunk_verify_failures_total") >= chunks,
        "{text}"
    );
    assert!(metric(&text, "modelfs_source_failovers_total") >= chunks);
    let from = |server: &RangeServer| {
        metric(
            &text,
            &format!("modelfs_fetch_bytes_total{{source=\"{}\"}}", server.url()),
        )
    };
    assert!(
        from(&bad) > 0.0 && from(&good) >= data.len() as f64,
        "{text}"
    );
    // Every byte read was either waited for, or already fetched by readahead.
    let read_bytes = |text: &str| {
        metric(text, "modelfs_cache_miss_bytes_total")
            + metric(text, "modelfs_cache_hit_bytes_total")
    };
    assert!(metric(&text, "modelfs_cache_miss_bytes_total") > 0.0);
    assert_eq!(read_bytes(&text), data.len() as f64);
    assert!(metric(&text, "modelfs_fuse_ops_total{op=\"read\"}") > 0.0);
    assert!(metric(&text, "modelfs_fetch_duration_seconds_count") >= chunks);

    let (status, health) = http_get(&addr, "/healthz");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["mounted"], true);
    assert_eq!(health["models"], 1);
    let bad_error = health["sources"][bad.url()]["error"].as_str().unwrap();
    assert!(bad_error.contains("mismatch"), "{health}");

    // A reread fetches nothing (the kernel may not even ask: page cache or passthrough).
    let fetched = good.bytes_sent() + bad.bytes_sent();
    assert_eq!(fs::read(m.path("m/w.bin")).unwrap(), data);
    let (_, after) = http_get(&addr, "/metrics");
    assert_eq!(good.bytes_sent() + bad.bytes_sent(), fetched);
    assert_eq!(
        metric(&after, "modelfs_cache_miss_bytes_total"),
        metric(&text, "modelfs_cache_miss_bytes_total"),
        "the reread was all hits"
    );
}

#[test]
fn a_file_without_chunk_hashes_is_fetched_whole_and_verified() {
    let ws = Workspace::new();
    let data = sample_bytes(5 * MIB as usize + 7, 5);
    ws.add_file("m", "w.bin", &data);
    let bad = RangeServer::start(&ws.models());
    bad.set_always(Some(Fault::Corrupt));
    let good = RangeServer::start(&ws.models());
    let sources = [format!("{}/m", bad.url()), format!("{}/m", good.url())];
    ws.write_manifest(&[without_chunk_hashes(&ws.entry("m", "m", &sources, MIB))]);
    let m = ws.mount();
    assert_eq!(
        sha256_hex(&fs::read(m.path("m/w.bin")).unwrap()),
        sha256_hex(&data)
    );
    assert!(m.log_text().contains("does not match its sha256"));
    assert_eq!(ws.status()["models"][0]["state"], "complete");
}

#[test]
fn transient_faults_are_retried_and_resumed() {
    let (ws, server, data) = single_model(6 * MIB as usize, MIB);
    server.push_fault(Fault::Status(503), 1);
    server.push_fault(Fault::ResetAfter(100_000), 1);
    server.push_fault(Fault::ShortBody, 1);
    server.push_fault(Fault::IgnoreRange, 1);
    server.push_fault(Fault::LongBody, 1);
    let m = ws.mount();
    assert_eq!(fs::read(m.path("m@1/weights.bin")).unwrap(), data);
}

#[test]
fn writes_creates_renames_and_deletes_get_erofs() {
    let (ws, _server, _) = single_model(1000, 1 << 16);
    let m = ws.mount();
    let file = m.path("m@1/weights.bin");
    let erofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(OpenOptions::new().write(true).open(&file).map(drop));
    erofs(File::create(m.path("m@1/new.bin")).map(drop));
    erofs(fs::create_dir(m.path("m@1/dir")));
    erofs(fs::remove_file(&file));
    erofs(fs::rename(&file, m.path("m@1/moved.bin")));
    erofs(fs::set_permissions(
        &file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    ));
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    let (ws, _server, _) = single_model(1000, 1 << 16);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut m = ws.mount();
        let status = m.signal_and_wait(signal);
        assert!(
            status.success(),
            "exit status {status} after signal {signal}:\n{}",
            m.log_text()
        );
        assert!(!is_mounted(&ws.mnt()));
    }
}

#[test]
fn daemon_returns_when_ready_and_umount_ends_it() {
    let (ws, _server, data) = single_model(100_000, 1 << 16);
    ws.run_ok(&["mount".as_ref(), ws.mnt().as_os_str(), "--daemon".as_ref()]);
    assert!(
        is_mounted(&ws.mnt()),
        "mounted by the time --daemon returns"
    );
    assert_eq!(fs::read(ws.mnt().join("m@1/weights.bin")).unwrap(), data);
    let mounts = ws.status()["mounts"].as_array().unwrap().clone();
    assert_eq!(mounts.len(), 1);
    let pid = mounts[0]["pid"].as_i64().unwrap() as i32;

    ws.run_ok(&["umount".as_ref(), ws.mnt().as_os_str()]);
    assert!(!is_mounted(&ws.mnt()));
    // SAFETY: signal 0 only probes for the process.
    wait_for("the daemon to exit", || unsafe { libc::kill(pid, 0) } != 0);
    assert!(ws.status()["mounts"].as_array().unwrap().is_empty());

    // Only modelfs mounts: anything else mounted is left alone (exit 2).
    let out = ws.modelfs().args(["umount", "/proc"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a modelfs one"), "{err}");
    assert!(is_mounted(std::path::Path::new("/proc")));
}

#[test]
fn an_ephemeral_cache_is_gone_after_unmount() {
    let (ws, _server, data) = single_model(3 * MIB as usize, MIB);
    let eph = ws.path("ephemeral-cache");
    let m = Mount::start(&ws, &["--ephemeral", "--cache-dir", eph.to_str().unwrap()]);
    assert!(fs::read(m.path("m@1/weights.bin")).unwrap() == data);
    assert!(
        eph.join("blobs").is_dir(),
        "the mount caches in its own directory"
    );
    drop(m);
    assert!(!eph.exists(), "the ephemeral cache outlived its mount");
    assert!(
        !ws.cache().join("VERSION").exists(),
        "the shared cache was not touched"
    );

    // It never adopts, and so never deletes, a directory that exists.
    let out = ws
        .modelfs()
        .args(["mount", "--ephemeral", "--cache-dir"])
        .arg(ws.cache())
        .arg(ws.mnt())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not exist yet"));
    assert!(ws.cache().is_dir());
}

#[test]
fn systemd_is_told_when_the_mount_is_ready_and_when_it_stops() {
    let (ws, _server, _data) = single_model(1000, MIB);
    let socket_path = ws.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let m = Mount::start_with_env(
        &ws,
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within the deadline");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(is_live_fuse(&m.mountpoint), "ready means mounted");
    drop(m);
    let n = socket.recv(&mut buf).expect("STOPPING=1 at unmount");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn an_fstab_line_mounts_through_the_mount_fuse_helper() {
    let (ws, _server, data) = single_model(2 * MIB as usize + 3, MIB);
    /// Detaches the mount however the test ends; the daemon then exits.
    struct Detach(std::path::PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    // mount(8) runs mount.fuse, which runs `modelfs MANIFEST MOUNTPOINT -o OPTIONS`,
    // as the fstab line `/abs/modelfs#MANIFEST MOUNTPOINT fuse OPTIONS 0 0` would
    // (with type fuse.modelfs, modelfs is looked up in mount's own PATH instead).
    let status = std::process::Command::new("mount")
        .args(["-t", "fuse"])
        .arg(format!("{BIN}#{}", ws.path("manifest.toml").display()))
        .arg(ws.mnt())
        .arg("-o")
        .arg(format!(
            "nodev,nosuid,cache_dir={},max_cache_size=1G",
            ws.cache().display()
        ))
        .env_remove("MODELFS_MANIFEST")
        .status()
        .unwrap();
    let _detach = Detach(ws.mnt());
    assert!(status.success(), "mount -t fuse failed");
    assert!(is_live_fuse(&ws.mnt()), "mounted when mount returned");
    assert!(fs::read(ws.mnt().join("m@1/weights.bin")).unwrap() == data);
    assert_eq!(ws.status()["mounts"][0]["max_cache_size"], 1u64 << 30);
    ws.run_ok(&["umount".as_ref(), ws.mnt().as_os_str()]);
    assert!(!is_mounted(&ws.mnt()));
}

#[test]
fn a_sequential_reader_moves_a_mebibyte_per_fuse_request() {
    let (ws, _server, data) = single_model(8 * MIB as usize, MIB);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);
    assert!(
        m.log_text()
            .contains("raised the mount's readahead kb=1024"),
        "{}",
        m.log_text()
    );
    assert!(fs::read(m.path("m@1/weights.bin")).unwrap() == data);
    let reads = metric(
        &http_get(&addr, "/metrics").1,
        "modelfs_fuse_ops_total{op=\"read\"}",
    );
    // 8 MiB in 1 MiB requests; with the default 128 KiB readahead it took 64.
    assert!(reads <= 12.0, "{reads} FUSE reads for 8 MiB");
}

#[test]
fn the_first_open_of_a_model_fetches_its_small_files_together() {
    let ws = Workspace::new();
    // A loader's model: a big weights file and twenty small ones.
    let small: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("cfg/file{i}.json"),
                sample_bytes(3000 + i * 100, 70 + i as u64),
            )
        })
        .collect();
    for (rel, data) in &small {
        ws.add_file("m", rel, data);
    }
    ws.add_file("m", "weights.bin", &sample_bytes(6 * MIB as usize, 69));
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("m", "m@1", &[format!("{}/m", server.url())], MIB)]);
    let m = ws.mount();

    // One open and read of one small file...
    assert!(fs::read(m.path(&format!("m@1/{}", small[0].0))).unwrap() == small[0].1);
    // ...and every small file of the model is fetched, the big one untouched.
    let small_bytes: u64 = small.iter().map(|(_, d)| d.len() as u64).sum();
    wait_for("the small files to be fetched ahead", || {
        ws.cached_bytes("m@1") == small_bytes
    });
    server.reset_counters();
    for (rel, data) in &small {
        assert!(fs::read(m.path(&format!("m@1/{rel}"))).unwrap() == *data);
    }
    assert_eq!(
        server.requests(),
        0,
        "the loader's next opens cost no round trip"
    );
}
