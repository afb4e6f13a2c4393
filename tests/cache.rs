//! One cache directory shared by many processes: every chunk fetched once,
//! whoever asks, and nothing verified lost to a kill.

mod support;

use std::process::{Command, Stdio};

use support::*;

const MIB: u64 = 1 << 20;

/// One model, one file of `size` bytes in 1 MiB chunks, on a fresh server.
fn one_file(size: usize) -> (Workspace, RangeServer, Vec<u8>) {
    let ws = Workspace::new();
    let data = sample_bytes(size, 41);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("m", "m", &[format!("{}/m", server.url())], MIB)]);
    (ws, server, data)
}

/// Starts `sha256sum` on each path at once; their digests, in order.
fn sha256sum_all(paths: &[std::path::PathBuf]) -> Vec<String> {
    let children: Vec<_> = paths
        .iter()
        .map(|p| {
            Command::new("sha256sum")
                .arg(p)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "sha256sum failed");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Bytes fetched over the file's size; printed for the README's figures.
fn fetched_ratio(what: &str, server: &RangeServer, size: usize) -> f64 {
    let ratio = server.bytes_sent() as f64 / size as f64;
    eprintln!("cache sharing: {what}: fetched {ratio:.3} x the file");
    ratio
}

#[test]
fn eight_processes_reading_one_cold_file_fetch_it_once() {
    let size = 32 * MIB as usize;
    let (ws, server, data) = one_file(size);
    // Slow enough per request that the readers overlap.
    server.set_rate(16 * MIB);
    let m = ws.mount();
    let digests = sha256sum_all(&vec![m.path("m/w.bin"); 8]);
    assert!(
        digests.iter().all(|d| *d == sha256_hex(&data)),
        "{digests:?}"
    );
    assert!(fetched_ratio("8 processes, one mount", &server, size) <= 1.1);
}

#[test]
fn two_mounts_on_one_cache_fetch_each_chunk_once() {
    let size = 32 * MIB as usize;
    let (ws, server, data) = one_file(size);
    server.set_rate(16 * MIB);
    let a = ws.mount();
    let b = Mount::start_on(&ws, &ws.path("mnt2"), &[], &[]);
    let paths = [a.path("m/w.bin"), b.path("m/w.bin")];
    let digests = sha256sum_all(&[paths.to_vec(), paths.to_vec()].concat());
    assert!(
        digests.iter().all(|d| *d == sha256_hex(&data)),
        "{digests:?}"
    );
    assert!(fetched_ratio("2 mounts", &server, size) <= 1.1);
}
