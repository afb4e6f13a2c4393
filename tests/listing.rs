//! Browsing a catalog: the listing is the manifest's, the kernel answers it
//! once read, and `st_blocks` follows the cache whoever fills or empties it.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use support::*;

const MIB: u64 = 1 << 20;

/// A manifest of `n` models of three files each, whose sources are never
/// asked; what the mount must show: model id → file name → size.
fn catalog(ws: &Workspace, n: usize) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut text = String::from("version = 1\n");
    let mut want = BTreeMap::new();
    for i in 0..n as u64 {
        let id = format!("model-{i:05}");
        text += &format!("\n[[model]]\nid = \"{id}\"\nsources = [\"http://127.0.0.1:1/{id}\"]\n");
        let files = [
            ("config.json", i % 1000 + 1),
            ("tokenizer.json", 2 * i + 7),
            ("model.safetensors", (i << 20) + 3),
        ];
        for (name, size) in files {
            let sha = sha256_hex(format!("{id}/{name}").as_bytes());
            text += &format!(
                "\n[[model.file]]\npath = \"{name}\"\nsize = {size}\nsha256 = \"{sha}\"\n"
            );
        }
        want.insert(id, files.iter().map(|&(n, s)| (n.to_owned(), s)).collect());
    }
    fs::write(ws.path("manifest.toml"), text).unwrap();
    want
}

/// What the mount shows, listed and stat'ed as `ls -lR` does.
fn listing(root: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    fs::read_dir(root)
        .unwrap()
        .map(|model| {
            let model = model.unwrap();
            let files = fs::read_dir(model.path())
                .unwrap()
                .map(|f| {
                    let f = f.unwrap();
                    let name = f.file_name().to_str().unwrap().to_owned();
                    (name, fs::symlink_metadata(f.path()).unwrap().len())
                })
                .collect();
            (model.file_name().to_str().unwrap().to_owned(), files)
        })
        .collect()
}

/// Every FUSE request modelfs has answered, by operation.
fn fuse_ops(addr: &str) -> BTreeMap<String, f64> {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("modelfs_fuse_ops_total{op=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(op, n)| (op.to_owned(), n.parse().unwrap()))
        .collect()
}

#[test]
fn a_catalog_of_10000_models_is_listed_once_then_by_the_kernel() {
    let ws = Workspace::new();
    let want = catalog(&ws, 10_000);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);

    assert!(
        listing(&m.mountpoint) == want,
        "the listing is the manifest's"
    );
    let first = fuse_ops(&addr);
    assert!(first["readdirplus"] > 0.0);
    // Names come with their attributes: no entry is looked up alone.
    assert_eq!(first.get("lookup"), None, "{first:?}");

    // Read again: the kernel answers it, names, sizes and listings. (It
    // may have dropped a few cached listings meanwhile, as it drops any
    // page, and then reads those again.)
    assert!(listing(&m.mountpoint) == want);
    let mut second = fuse_ops(&addr);
    let relisted = second.remove("readdirplus").unwrap() - first["readdirplus"];
    assert!(
        relisted <= first["readdirplus"] / 100.0,
        "the second listing read {relisted} listings again"
    );
    second.insert("readdirplus".into(), first["readdirplus"]);
    assert_eq!(second, first, "the second listing reached modelfs");

    // `ls -l` asks for `security.selinux` of every entry: not supported
    // (which ls remembers), rather than absent each time.
    let file = m.path("model-00042/config.json");
    let path = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
    let name = c"security.selinux";
    // SAFETY: valid C strings; a zero size asks only for the length.
    let got = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(got, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(
        xattr(&file, "user.modelfs.sha256"),
        sha256_hex(b"model-00042/config.json")
    );
}

/// Attributes live a day in the kernel, so a change another process makes
/// to the cache must be pushed: a `prefetch` fills a file, then the blob
/// goes (as an eviction by another process would take it).
#[test]
fn st_blocks_follows_the_cache_whoever_changes_it() {
    let ws = Workspace::new();
    let size = 3 * MIB as usize + 77;
    let data = sample_bytes(size, 9);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("m", "m@1", &[format!("{}/m", server.url())], MIB)]);
    let m = Mount::start(&ws, &[]);
    let file = m.path("m@1/w.bin");
    assert_eq!(fs::metadata(&file).unwrap().blocks(), 0);

    ws.run_ok(&["prefetch".as_ref(), "m@1".as_ref()]);
    wait_for("st_blocks to show what another process fetched", || {
        fs::metadata(&file).unwrap().blocks() * 512 >= size as u64
    });

    let blob = ws
        .cache()
        .join("blobs")
        .join(&sha256_hex(&data)[..2])
        .join(sha256_hex(&data));
    fs::remove_file(blob).unwrap();
    wait_for("st_blocks to show the blob gone", || {
        fs::metadata(&file).unwrap().blocks() == 0
    });
}

/// The tree does not change while mounted, so a name found absent once is
/// not asked for again (loaders probe for many optional files).
#[test]
fn absent_names_are_remembered_by_the_kernel() {
    let ws = Workspace::new();
    catalog(&ws, 3);
    let addr = free_addr();
    let m = Mount::start(&ws, &["--metrics-addr", &addr]);
    let lookups = || fuse_ops(&addr).get("lookup").copied().unwrap_or(0.0);
    let probe = m.path("model-00001/adapter_config.json");
    for _ in 0..3 {
        assert_eq!(
            fs::metadata(&probe).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
    // The model directory's lookup and the absent name's, once each.
    assert_eq!(lookups(), 2.0);
    assert_eq!(
        fs::metadata(m.path("model-00001/config.json"))
            .unwrap()
            .len(),
        2
    );
}
