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
    // With A gone too, the next open goes through the kernel directly.
    let d = File::open(&path).unwrap();
    assert!(read_all(&d) == data);
    let metrics = http_get(&addr, "/metrics").1;
    let opens = |mode: &str| metric(&metrics, &format!("modelfs_opens_total{{mode=\"{mode}\"}}"));
    assert_eq!(
        (opens("partial"), opens("complete"), opens("passthrough")),
        (2.0, 3.0, 1.0),
        "A and B partial, the three Cs served by modelfs, D by the kernel"
    );
}

#[test]
fn an_open_after_the_file_completed_under_another_open_succeeds() {
    open_after_completion(false);
}

#[test]
fn an_mmap_after_the_file_completed_under_another_open_succeeds() {
    open_after_completion(true);
}
