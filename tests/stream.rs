//! Model streams through a real mount: a loader reading on through one shard
//! fetches the shards it will read next, each byte once, behind the
//! reader's own requests, within the quota, and only while the model is open.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use support::*;

const MIB: u64 = 1 << 20;

/// `llm`'s shard `k` of 4.
fn shard(k: u64) -> String {
    format!("model-{k:05}-of-00004.safetensors")
}

/// The byte ranges asked for each path, from the server's request log.
fn ranges(server: &RangeServer) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut by_path: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for entry in server.request_log() {
        let mut words = entry.split(' ');
        let path = words.next().unwrap().to_owned();
        let range = words.next().and_then(|r| r.split_once('-'));
        let (first, last) = range
            .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
            .unwrap();
        by_path.entry(path).or_default().push((first, last));
    }
    by_path
}

/// Every byte of `path` (`size` bytes) was asked for exactly once.
fn assert_fetched_once(asked: &BTreeMap<String, Vec<(u64, u64)>>, path: &str, size: u64) {
    let mut got = asked.get(path).cloned().unwrap_or_default();
    got.sort_unstable();
    let mut next = 0;
    for &(first, last) in &got {
        assert_eq!(
            first, next,
            "{path}: asked {got:?}: a gap or a byte asked twice"
        );
        next = last + 1;
    }
    assert_eq!(next, size, "{path}: asked {got:?}");
}

fn cached(path: &Path) -> u64 {
    xattr(path, "user.modelfs.cached").parse().unwrap()
}

/// Reads the first 5 MiB of `path` as a loader does, 1 MiB at a time (past
/// the 4 MiB in a row that start a stream), and keeps it open.
fn start_loading(path: &Path) -> std::fs::File {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; MIB as usize];
    for i in 0..5 {
        file.read_exact_at(&mut buf, i * MIB).unwrap();
    }
    file
}

fn metrics(addr: &str) -> String {
    http_get(addr, "/metrics").1
}

/// Four 6 MiB shards with their index, and two other copies of the model
/// that a loader of the shards does not read.
const WRITE_SHARDS: &str = r#"
import sys, json, numpy as np
from safetensors.numpy import save_file
d = sys.argv[1]
rng = np.random.default_rng(11)
weight_map = {}
for k in range(1, 5):
    name = f"model-{k:05d}-of-00004.safetensors"
    tensors = {f"layers.{k}.{j}.weight": rng.standard_normal((512, 1536)).astype(np.float16)
               for j in range(4)}
    save_file(tensors, f"{d}/{name}")
    weight_map.update({t: name for t in tensors})
with open(f"{d}/model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
save_file({"all": rng.standard_normal((1024, 3072)).astype(np.float16)}, f"{d}/consolidated.safetensors")
with open(f"{d}/pytorch_model.bin", "wb") as f:
    f.write(rng.bytes(6 << 20))
with open(f"{d}/config.json", "w") as f:
    f.write("{}")
"#;

/// Loads every tensor of the shards the index names, in the loader's order.
const LOAD: &str = r#"
import sys, json, hashlib, os
from safetensors import safe_open
d = sys.argv[1]
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
for shard in sorted(set(index["weight_map"].values())):
    with safe_open(os.path.join(d, shard), framework="np") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            print(shard, name, t.shape, hashlib.sha256(t.tobytes()).hexdigest())
"#;

#[test]
fn reading_on_through_one_shard_streams_the_others_each_byte_once() {
    let ws = Workspace::new();
    let dir = ws.models().join("llm");
    std::fs::create_dir_all(&dir).unwrap();
    python(WRITE_SHARDS, &[&dir]);
    let expected = python(LOAD, &[&dir]);
    assert_eq!(expected.lines().count(), 16);
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("llm", "llm", &[format!("{}/llm", server.url())], MIB)]);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);

    // A loader reads on through the first shard, and keeps it open.
    let first = start_loading(&m.path(&format!("llm/{}", shard(1))));
    for k in 2..=4 {
        let path = m.path(&format!("llm/{}", shard(k)));
        let size = std::fs::metadata(&path).unwrap().len();
        wait_for(&format!("shard {k} streamed in"), || cached(&path) == size);
    }
    wait_for("the stream to end", || {
        metric(&metrics(&addr), "modelfs_streams_ended_total{end=\"done\"}") == 1.0
    });
    drop(first);

    let loaded = python(LOAD, &[&m.path("llm")]);
    assert_eq!(loaded, expected, "the tensors loaded through the mount");
    let asked = ranges(&server);
    for k in 1..=4 {
        let size = std::fs::metadata(dir.join(shard(k))).unwrap().len();
        assert_fetched_once(&asked, &format!("/llm/{}", shard(k)), size);
    }
    for other in ["consolidated.safetensors", "pytorch_model.bin"] {
        assert!(
            !asked.contains_key(&format!("/llm/{other}")),
            "{other} was fetched: {asked:?}"
        );
        assert_eq!(cached(&m.path(&format!("llm/{other}"))), 0);
    }
    let text = metrics(&addr);
    let streamed = metric(&text, "modelfs_stream_bytes_total{model=\"llm\"}");
    assert!(
        streamed >= (3 * 6 * MIB) as f64,
        "stream bytes {streamed}\n{text}"
    );
    let (_, health) = http_get(&addr, "/healthz");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["streams"]["llm"]["state"], "done", "{health:#}");
    assert_eq!(health["streams"]["llm"]["remaining_bytes"], 0, "{health:#}");
    // `status` shows it too, from the mount's record.
    wait_for("status to show the stream", || {
        ws.status()["mounts"][0]["streams"]["llm"]["state"] == "done"
    });
    let text = ws.run_ok(&["status".as_ref()]);
    assert!(text.contains("stream of llm: done"), "{text}");
}

/// Page faults are a sequential reader too: a loader that maps one shard
/// and copies its tensors out starts the stream of the others.
#[test]
fn a_loader_mapping_one_shard_streams_the_others() {
    let ws = Workspace::new();
    let dir = ws.models().join("llm");
    std::fs::create_dir_all(&dir).unwrap();
    python(WRITE_SHARDS, &[&dir]);
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("llm", "llm", &[format!("{}/llm", server.url())], MIB)]);
    let m = ws.mount();
    // safetensors maps the file: every byte of it reaches modelfs as a fault.
    let one = r#"
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="np") as f:
    print(sum(f.get_tensor(k).nbytes for k in f.keys()))
"#;
    let loaded = python(one, &[&m.path(&format!("llm/{}", shard(1)))]);
    assert_eq!(loaded.trim(), (6 * MIB).to_string());
    for k in 2..=4 {
        let path = m.path(&format!("llm/{}", shard(k)));
        let size = std::fs::metadata(&path).unwrap().len();
        wait_for(&format!("shard {k} streamed in"), || cached(&path) == size);
    }
}

/// `llm`: four shards of `mib` MiB each, of plain bytes, served by a new server.
fn plain_shards(ws: &Workspace, mib: u64, extra: &[&str]) -> (RangeServer, Mount, String) {
    for k in 1..=4 {
        ws.add_file("llm", &shard(k), &sample_bytes((mib * MIB) as usize, k));
    }
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("llm", "llm", &[format!("{}/llm", server.url())], MIB)]);
    let addr = free_addr();
    let m = Mount::start(ws, &[&["--metrics-addr", &addr], extra].concat());
    (server, m, addr)
}

#[test]
fn a_reader_asks_ahead_of_a_running_stream() {
    let ws = Workspace::new();
    // The stream's shards, 2 to 4, make 18 requests of 8 MiB: more than it
    // keeps in flight (16).
    let (server, m, addr) = plain_shards(&ws, 48, &[]);
    server.set_rate(2 * MIB);
    let first = start_loading(&m.path(&format!("llm/{}", shard(1))));
    wait_for("the stream's first requests", || {
        server.request_log().len() >= 16
    });

    // The last chunk of the last shard: the stream's last request would bring it.
    let last = std::fs::File::open(m.path(&format!("llm/{}", shard(4)))).unwrap();
    let mut buf = vec![0; 4096];
    let at = 48 * MIB - 4096;
    last.read_exact_at(&mut buf, at).unwrap();
    let original = std::fs::read(ws.models().join("llm").join(shard(4))).unwrap();
    assert_eq!(buf, original[at as usize..], "the reader's bytes");
    let path = format!("/llm/{}", shard(4));
    let log = server.request_log();
    let reader = log
        .iter()
        .position(|l| *l == format!("{path} {}-{}", 47 * MIB, 48 * MIB - 1))
        .unwrap_or_else(|| panic!("no request of the reader's own chunk: {log:?}"));
    assert!(
        !log[..reader]
            .iter()
            .any(|l| l.starts_with(&format!("{path} {}-", 40 * MIB))),
        "the stream asked for the end of the last shard before the reader did: {log:?}"
    );
    wait_for("the stream to end", || {
        metric(&metrics(&addr), "modelfs_streams_ended_total{end=\"done\"}") == 1.0
    });
    let log = server.request_log();
    assert!(
        log[reader..].contains(&format!("{path} {}-{}", 40 * MIB, 47 * MIB - 1)),
        "the stream, still running, left out the chunk the reader had: {log:?}"
    );
    drop((first, last));
    server.set_rate(0);
    for k in 1..=4 {
        let got = std::fs::read(m.path(&format!("llm/{}", shard(k)))).unwrap();
        assert!(
            got == sample_bytes((48 * MIB) as usize, k),
            "shard {k}'s bytes"
        );
    }
    let asked = ranges(&server);
    for k in 1..=4 {
        assert_fetched_once(&asked, &format!("/llm/{}", shard(k)), 48 * MIB);
    }
}

#[test]
fn a_stream_stops_at_the_quota_and_keeps_what_it_brought() {
    let ws = Workspace::new();
    ws.add_file("old", "old.bin", &sample_bytes((8 * MIB) as usize, 9));
    for k in 1..=4 {
        ws.add_file("llm", &shard(k), &sample_bytes((8 * MIB) as usize, k));
    }
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[
        ws.entry("old", "old", &[format!("{}/old", server.url())], MIB),
        ws.entry("llm", "llm", &[format!("{}/llm", server.url())], MIB),
    ]);
    ws.run_ok(&["prefetch".as_ref(), "old".as_ref()]);
    let addr = free_addr();
    let quota = 20 * MIB;
    let m = Mount::start(&ws, &["--metrics-addr", &addr, "--max-cache-size", "20M"]);

    let first = start_loading(&m.path(&format!("llm/{}", shard(1))));
    wait_for("the stream to stop at the quota", || {
        metric(
            &metrics(&addr),
            "modelfs_streams_ended_total{end=\"cache_full\"}",
        ) == 1.0
    });
    // What the server sent of llm is all still cached: the stream evicted
    // the least recently used model, never a file it brought in.
    assert_eq!(
        cached(&m.path("old/old.bin")),
        0,
        "the older model was evicted"
    );
    let held: u64 = (1..=4)
        .map(|k| cached(&m.path(&format!("llm/{}", shard(k)))))
        .sum();
    let sent: u64 = ranges(&server)
        .iter()
        .filter(|(p, _)| p.starts_with("/llm/"))
        .flat_map(|(_, r)| r)
        .map(|(a, b)| b + 1 - a)
        .sum();
    assert_eq!(held, sent, "every byte fetched for llm is still cached");
    assert!(held > 8 * MIB && held <= quota, "{held} bytes held");
    let bounds = reservations(&[&m]);
    assert!(!bounds.is_empty());
    for (bytes, bound) in bounds {
        assert!(
            bound <= quota,
            "a reservation of {bytes} let the cache reach {bound}"
        );
    }
    drop(first);
    for k in 1..=4 {
        let got = std::fs::read(m.path(&format!("llm/{}", shard(k)))).unwrap();
        assert!(
            got == sample_bytes((8 * MIB) as usize, k),
            "shard {k}'s bytes"
        );
    }
}

#[test]
fn closing_every_file_stops_the_stream() {
    let ws = Workspace::new();
    let (server, m, addr) = plain_shards(&ws, 16, &["--stream-grace", "0.2"]);
    server.set_rate(2 * MIB);
    let first = start_loading(&m.path(&format!("llm/{}", shard(1))));
    wait_for("the stream to start", || {
        metric(&metrics(&addr), "modelfs_stream_active{model=\"llm\"}") == 1.0
    });
    drop(first);
    wait_for("the stream to stop", || {
        metric(
            &metrics(&addr),
            "modelfs_streams_ended_total{end=\"closed\"}",
        ) == 1.0
    });
    let cached_now: u64 = (1..=4)
        .map(|k| cached(&m.path(&format!("llm/{}", shard(k)))))
        .sum();
    assert!(
        cached_now < 64 * MIB,
        "the model was fetched whole: {cached_now}"
    );
    let (_, health) = http_get(&addr, "/healthz");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["streams"]["llm"]["state"], "closed", "{health:#}");
}
