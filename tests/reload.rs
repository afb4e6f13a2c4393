//! A catalog that changes without unmounting: `modelfs reload`, SIGHUP, an
//! edited manifest file and a changed manifest at a URL are served by the
//! running mount; files open keep reading what they opened; a manifest
//! that cannot be used changes nothing.

mod support;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use support::range_server::Fault;
use support::*;

const MIB: u64 = 1 << 20;

/// Model directories under `models/`, each with one `w.bin`, and their
/// entries served from `models/` by file:// sources.
struct Catalog {
    ws: Workspace,
}

impl Catalog {
    fn new() -> Catalog {
        Catalog {
            ws: Workspace::new(),
        }
    }

    /// Adds `models/<dir>/w.bin` of `len` bytes; returns them.
    fn add(&self, dir: &str, len: usize, seed: u64) -> Vec<u8> {
        let data = sample_bytes(len, seed);
        self.ws.add_file(dir, "w.bin", &data);
        data
    }

    /// The entry of model `id` with the files of `models/<dir>`.
    fn entry(&self, dir: &str, id: &str) -> String {
        let source = format!("file://{}", self.ws.models().join(dir).display());
        self.ws.entry(dir, id, &[source], MIB)
    }

    /// Writes the manifest with these `(dir, id)` models, in place.
    fn write(&self, models: &[(&str, &str)]) {
        let entries: Vec<String> = models.iter().map(|(d, id)| self.entry(d, id)).collect();
        self.ws.write_manifest(&entries);
    }

    /// A mount of the catalog that reloads only when asked (no URL polls),
    /// with `extra` options.
    fn mount(&self, extra: &[&str]) -> Mount {
        let mut args = vec!["--manifest-refresh", "0"];
        args.extend_from_slice(extra);
        Mount::start(&self.ws, &args)
    }

    fn reload(&self, mount: &Mount) -> Output {
        let out = self
            .ws
            .modelfs()
            .arg("reload")
            .arg(&mount.mountpoint)
            .output()
            .unwrap();
        eprintln!(
            "reload: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn listed(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_model_added_then_reloaded_is_listed_and_readable_with_no_remount() {
    let c = Catalog::new();
    let a = c.add("a", 3 * MIB as usize, 1);
    let b = c.add("b", 2 * MIB as usize, 2);
    c.write(&[("a", "a@1")]);
    let m = c.mount(&[]);
    // The kernel keeps the listing, and that b@1 is absent.
    assert_eq!(listed(&m.mountpoint), ["a@1"]);
    assert!(!m.path("b@1").exists());
    assert!(fs::read(m.path("a@1/w.bin")).unwrap() == a);
    let a_ino = fs::metadata(m.path("a@1/w.bin")).unwrap().ino();

    c.write(&[("a", "a@1"), ("b", "b@1")]);
    let asked = Instant::now();
    let out = c.reload(&m);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded: generation 2, 2 models"));
    // No waiting: once `reload` returns, the kernel has forgotten.
    assert_eq!(listed(&m.mountpoint), ["a@1", "b@1"]);
    assert!(fs::read(m.path("b@1/w.bin")).unwrap() == b);
    eprintln!(
        "added model listed and read {:?} after reload was asked",
        asked.elapsed()
    );
    // What stayed is the same file: same inode, still cached.
    let a_meta = fs::metadata(m.path("a@1/w.bin")).unwrap();
    assert_eq!(a_meta.ino(), a_ino);
    assert_eq!(
        xattr(&m.path("a@1/w.bin"), "user.modelfs.cached"),
        a.len().to_string()
    );

    // The same again: nothing changed.
    let out = c.reload(&m);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged: generation 2"));

    // SIGHUP does the same.
    c.write(&[("b", "b@1")]);
    let asked = Instant::now();
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(m.pid(), libc::SIGHUP) }, 0);
    wait_for("the removed model to leave the listing", || {
        listed(&m.mountpoint) == ["b@1"]
    });
    eprintln!(
        "SIGHUP: removed model gone from ls in {:?}",
        asked.elapsed()
    );
    assert!(!m.path("a@1").exists());
}

#[test]
fn an_edited_manifest_file_is_picked_up_with_no_signal() {
    let c = Catalog::new();
    c.add("a", MIB as usize, 1);
    let b = c.add("b", MIB as usize, 2);
    c.add("c", MIB as usize, 3);
    c.write(&[("a", "a@1")]);
    let m = Mount::start(&c.ws, &[]);
    assert_eq!(listed(&m.mountpoint), ["a@1"]);

    // Edited in place.
    c.write(&[("a", "a@1"), ("b", "b@1")]);
    let edited = Instant::now();
    wait_for("the edit to be served", || m.path("b@1").exists());
    eprintln!("edit in place picked up in {:?}", edited.elapsed());
    assert!(fs::read(m.path("b@1/w.bin")).unwrap() == b);

    // Replaced by a rename, as editors and config tools do.
    let manifest = c.ws.path("manifest.toml");
    let next = c.ws.path("manifest.toml.new");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&next, format!("{text}\n{}", c.entry("c", "c@1"))).unwrap();
    fs::rename(&next, &manifest).unwrap();
    let renamed = Instant::now();
    wait_for("the renamed file to be served", || {
        listed(&m.mountpoint) == ["a@1", "b@1", "c@1"]
    });
    eprintln!("rename picked up in {:?}", renamed.elapsed());
    assert!(m.log_text().contains("reloaded the manifest"));
}

#[test]
fn a_model_removed_while_its_file_is_read_reads_to_the_end() {
    let c = Catalog::new();
    let a = c.add("a", 8 * MIB as usize, 1);
    c.add("b", MIB as usize, 2);
    c.write(&[("a", "a@1"), ("b", "b@1")]);
    let m = c.mount(&[]);
    let mut file = fs::File::open(m.path("a@1/w.bin")).unwrap();
    let mut got = vec![0u8; MIB as usize];
    file.read_exact(&mut got).unwrap();

    c.write(&[("b", "b@1")]);
    assert!(c.reload(&m).status.success());
    assert_eq!(listed(&m.mountpoint), ["b@1"]);
    assert!(!m.path("a@1/w.bin").exists());
    // The open file: its attributes and the rest of its bytes.
    assert_eq!(file.metadata().unwrap().len(), a.len() as u64);
    file.read_to_end(&mut got).unwrap();
    assert!(got == a, "the open file read to the end, right");
}

#[test]
fn a_file_whose_content_changed_is_a_new_file_and_the_open_one_keeps_the_old() {
    let c = Catalog::new();
    // Version 2 of the model lives elsewhere, as a new release would.
    let old = c.add("v1", 6 * MIB as usize, 1);
    let new = c.add("v2", 5 * MIB as usize, 2);
    c.write(&[("v1", "m")]);
    let m = c.mount(&[]);
    let path = m.path("m/w.bin");
    let mut before = fs::File::open(&path).unwrap();
    let old_ino = before.metadata().unwrap().ino();
    let mut head = vec![0u8; MIB as usize];
    before.read_exact(&mut head).unwrap();

    c.write(&[("v2", "m")]);
    assert!(c.reload(&m).status.success());
    let meta = fs::metadata(&path).unwrap();
    assert_ne!(meta.ino(), old_ino, "a new inode");
    assert_eq!(meta.len(), new.len() as u64);
    assert!(
        fs::read(&path).unwrap() == new,
        "a new open reads the new bytes"
    );
    // The file opened before reads the old bytes, all of them.
    assert_eq!(before.metadata().unwrap().len(), old.len() as u64);
    let mut rest = Vec::new();
    before.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(head == old, "the old handle read the old bytes");
    before.seek(SeekFrom::Start(0)).unwrap();
    before.read_exact(&mut head[..4096]).unwrap();
    assert!(head[..4096] == old[..4096]);
}

#[test]
fn a_manifest_that_cannot_be_used_changes_nothing() {
    let c = Catalog::new();
    let a = c.add("a", MIB as usize, 1);
    c.add("b", MIB as usize, 2);
    c.write(&[("a", "a@1")]);
    let addr = free_addr();
    let m = c.mount(&["--metrics-addr", &addr]);
    let manifest = c.ws.path("manifest.toml");
    let good = fs::read_to_string(&manifest).unwrap();

    // A syntax error on line 3, then a bad sha256.
    let bad_sha = good.replacen("sha256 = \"", "sha256 = \"zz", 1);
    for (text, located) in [
        (format!("version = 1\n\n[[model]\n{good}"), ":3:"),
        (bad_sha, "sha256"),
    ] {
        fs::write(&manifest, text).unwrap();
        let out = c.reload(&m);
        assert_eq!(out.status.code(), Some(1));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("manifest.toml") && said.contains(located),
            "{said}"
        );
        assert!(said.contains("still serves generation 1"), "{said}");
        let catalog = &healthz(&addr)["catalog"];
        assert_eq!(catalog["generation"], 1);
        assert!(
            catalog["error"].as_str().unwrap().contains(located),
            "{catalog}"
        );
        assert_eq!(listed(&m.mountpoint), ["a@1"]);
        assert!(fs::read(m.path("a@1/w.bin")).unwrap() == a);
    }
    assert!(m.log_text().contains("the catalog from before stays"));
    // `status` (given a manifest it can read) says so too, from the
    // mount's record.
    let good_copy = c.ws.path("good.toml");
    fs::write(&good_copy, &good).unwrap();
    wait_for("status to show the error", || {
        let text =
            c.ws.run_ok(&["status".as_ref(), "-m".as_ref(), good_copy.as_ref()]);
        text.contains("catalog: generation 1, 1 models, 2 reloads; not served:")
    });

    // Mended: served, and the error is gone.
    fs::write(&manifest, format!("{good}\n{}", c.entry("b", "b@1"))).unwrap();
    assert!(c.reload(&m).status.success());
    let catalog = &healthz(&addr)["catalog"];
    assert_eq!(catalog["generation"], 2);
    assert!(catalog.get("error").is_none(), "{catalog}");
    let metrics = http_get(&addr, "/metrics").1;
    let reloads = |result: &str| {
        metric(
            &metrics,
            &format!("modelfs_catalog_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!((reloads("failed"), reloads("loaded")), (2.0, 1.0));
}

#[test]
fn a_manifest_at_a_url_is_followed_and_unchanged_polls_send_no_body() {
    let c = Catalog::new();
    c.add("a", MIB as usize, 1);
    let b = c.add("b", MIB as usize, 2);
    let server = RangeServer::start(&c.ws.models());
    let entry = |dir: &str, id: &str| {
        c.ws.entry(dir, id, &[format!("{}/{dir}", server.url())], MIB)
    };
    let catalog = c.ws.models().join("catalog.toml");
    fs::write(&catalog, manifest_text(&[entry("a", "a@1")])).unwrap();
    let url = format!("{}/catalog.toml", server.url());
    let addr = free_addr();
    let m = Mount::start(
        &c.ws,
        &[
            "-m",
            &url,
            "--manifest-refresh",
            "1",
            "--metrics-addr",
            &addr,
        ],
    );
    assert_eq!(listed(&m.mountpoint), ["a@1"]);

    // Polls of an unchanged manifest: asked, and answered with no body.
    server.reset_counters();
    wait_for("two polls", || server.requests() >= 2);
    assert_eq!(server.bytes_sent(), 0, "an unchanged poll sent a body");
    assert_eq!(healthz(&addr)["catalog"]["generation"], 1);

    fs::write(
        &catalog,
        manifest_text(&[entry("a", "a@1"), entry("b", "b@1")]),
    )
    .unwrap();
    let changed = Instant::now();
    wait_for("the change to be served", || m.path("b@1").exists());
    eprintln!(
        "changed URL picked up in {:?} (refresh 1 s)",
        changed.elapsed()
    );
    assert!(fs::read(m.path("b@1/w.bin")).unwrap() == b);

    // The URL fails: the catalog stays, and says why.
    server.set_always(Some(Fault::Status(500)));
    wait_for("a failed poll", || {
        healthz(&addr)["catalog"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("catalog.toml"))
    });
    assert_eq!(healthz(&addr)["catalog"]["generation"], 2);
    server.set_always(None);
    assert_eq!(listed(&m.mountpoint), ["a@1", "b@1"]);

    // A text that does not validate: refused, and still refused at the
    // polls after (its ETag is not taken as the catalog's).
    fs::write(
        &catalog,
        "version = 1

[[model]
",
    )
    .unwrap();
    let error = || {
        let catalog = healthz(&addr)["catalog"].clone();
        let error = catalog["error"].as_str().unwrap_or_default().to_owned();
        (catalog["reloads"].as_u64().unwrap(), error)
    };
    wait_for("the bad text to be refused", || error().1.contains(":3:"));
    let (reloads, _) = error();
    wait_for("two polls more", || error().0 >= reloads + 2);
    assert!(error().1.contains(":3:"), "{:?}", error());
    assert_eq!(healthz(&addr)["catalog"]["generation"], 2);
}

#[test]
fn the_hub_cache_layout_follows_a_reload() {
    let c = Catalog::new();
    c.add("v1", MIB as usize, 1);
    let new = c.add("v2", MIB as usize, 2);
    let with_repo = |dir: &str| {
        c.entry(dir, "m")
            .replacen("[[model]]\n", "[[model]]\nrepo = \"org/name\"\n", 1)
    };
    c.ws.write_manifest(&[with_repo("v1")]);
    let m = c.mount(&["--layout", "hf"]);
    let repo = m.path("models--org--name");
    let old_rev = fs::read_to_string(repo.join("refs/main")).unwrap();
    assert_eq!(listed(&repo.join("snapshots")), [old_rev.as_str()]);
    let mut open_ref = fs::File::open(repo.join("refs/main")).unwrap();

    c.ws.write_manifest(&[with_repo("v2")]);
    assert!(c.reload(&m).status.success());
    let mut kept = String::new();
    open_ref.read_to_string(&mut kept).unwrap();
    assert_eq!(kept, old_rev, "refs/main open before reads what it opened");
    let rev = fs::read_to_string(repo.join("refs/main")).unwrap();
    assert_ne!(rev, old_rev, "a new revision for new content");
    assert_eq!(listed(&repo.join("snapshots")), [rev.as_str()]);
    let snapshot = repo.join("snapshots").join(&rev).join("w.bin");
    assert!(fs::read(snapshot).unwrap() == new);
    assert_eq!(listed(&repo.join("blobs")), [sha256_hex(&new)]);
}

/// The same from an S3-compatible store: polls signed as the sources are.
#[test]
fn a_manifest_in_a_bucket_is_followed() {
    let c = Catalog::new();
    c.ws.add_file("bucket/a", "w.bin", &sample_bytes(MIB as usize, 1));
    let b = sample_bytes(MIB as usize, 2);
    c.ws.add_file("bucket/b", "w.bin", &b);
    let s3 = support::s3_server::S3Server::start(&c.ws.models());
    let entry = |dir: &str, id: &str| {
        c.ws.entry(
            &format!("bucket/{dir}"),
            id,
            &[format!("s3://bucket/{dir}")],
            MIB,
        )
    };
    let catalog = c.ws.models().join("bucket/catalog.toml");
    fs::write(&catalog, manifest_text(&[entry("a", "a@1")])).unwrap();
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let addr = free_addr();
    let m = Mount::start_with_env(
        &c.ws,
        &[
            "-m",
            "s3://bucket/catalog.toml",
            "--manifest-refresh",
            "1",
            "--metrics-addr",
            &addr,
        ],
        &env,
    );
    assert_eq!(listed(&m.mountpoint), ["a@1"]);
    wait_for("two polls", || {
        healthz(&addr)["catalog"]["reloads"].as_u64() >= Some(2)
    });
    assert_eq!(healthz(&addr)["catalog"]["generation"], 1);
    assert!(healthz(&addr)["catalog"].get("error").is_none());
    // s3s-fs answers a conditional GetObject whole (S3 itself says 304):
    // the same text again is not built again.
    assert!(m.log_text().contains("the manifest is unchanged"));
    fs::write(
        &catalog,
        manifest_text(&[entry("a", "a@1"), entry("b", "b@1")]),
    )
    .unwrap();
    wait_for("the change to be served", || m.path("b@1").exists());
    assert!(fs::read(m.path("b@1/w.bin")).unwrap() == b);
}
