//! Signed models (OpenSSF Model Signing): with `--trusted-key`, a model that
//! names a bundle is served only if the bundle, made here by the real
//! `model_signing` signer, verifies against a trusted key and signs every
//! file with the manifest's sha256; nothing else of it is served, and a
//! listing stays offline.

mod support;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use support::*;

const MIB: usize = 1 << 20;
const SIGNATURE: &str = "user.modelfs.signature";

/// The `model_signing` CLI (`scripts/ensure-model-signing.sh` installs it
/// and `scripts/test.sh` names it in `$MODEL_SIGNING`) and the Python of
/// its environment, which has its library and `cryptography`.
struct Signer {
    cli: PathBuf,
    python: PathBuf,
}

impl Signer {
    fn new() -> Signer {
        let cli = PathBuf::from(std::env::var("MODEL_SIGNING").expect(
            "MODEL_SIGNING names the model_signing CLI (scripts/test.sh sets it, from scripts/ensure-model-signing.sh)",
        ));
        let python = cli.with_file_name("python");
        Signer { cli, python }
    }

    fn run(&self, command: &mut Command) -> String {
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A new key pair as `openssl ecparam -genkey` makes: (private, public)
    /// PEM files; P-384 if `name` starts with `p384`, else P-256.
    fn keypair(&self, ws: &Workspace, name: &str) -> (PathBuf, PathBuf) {
        let (private, public) = (
            ws.path(&format!("{name}.pem")),
            ws.path(&format!("{name}.pub.pem")),
        );
        let script = "import sys
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization as s
k = ec.generate_private_key(ec.SECP384R1() if sys.argv[3] == 'p384' else ec.SECP256R1())
open(sys.argv[1], 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()))
open(sys.argv[2], 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))";
        self.run(
            Command::new(&self.python)
                .args(["-c", script])
                .arg(&private)
                .arg(&public)
                .arg(if name.starts_with("p384") {
                    "p384"
                } else {
                    "p256"
                }),
        );
        (private, public)
    }

    /// `model_signing sign key DIR`, the bundle at `DIR/model.sig`: each file signed whole.
    fn sign(&self, dir: &Path, private: &Path) {
        self.run(
            Command::new(&self.cli)
                .args(["sign", "key"])
                .arg(dir)
                .arg("--private_key")
                .arg(private)
                .arg("--signature")
                .arg(dir.join("model.sig")),
        );
    }

    /// The same through `model_signing`'s library, in shards of `shard` bytes.
    fn sign_shards(&self, dir: &Path, private: &Path, shard: usize) {
        let script = "import sys, pathlib, model_signing
d, key, shard = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
c = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
c.set_hashing_config(model_signing.hashing.Config().use_shard_serialization(shard_size=shard).set_ignored_paths(paths=[d / 'model.sig']))
c.sign(d, d / 'model.sig')";
        self.run(
            Command::new(&self.python)
                .args(["-c", script])
                .arg(dir)
                .arg(private)
                .arg(shard.to_string()),
        );
    }
}

/// A workspace with a range server over `models/` and a trusted key.
struct Signed {
    ws: Workspace,
    server: RangeServer,
    signer: Signer,
    private: PathBuf,
    public: PathBuf,
}

impl Signed {
    fn new() -> Signed {
        let ws = Workspace::new();
        let server = RangeServer::start(&ws.models());
        let signer = Signer::new();
        let (private, public) = signer.keypair(&ws, "publisher");
        Signed {
            ws,
            server,
            signer,
            private,
            public,
        }
    }

    /// `models/<dir>` with a config and `weights` bytes of weights; returns the weights.
    fn model(&self, dir: &str, weights: usize, seed: u64) -> Vec<u8> {
        let data = sample_bytes(weights, seed);
        self.ws.add_file(
            dir,
            "config.json",
            format!("{{\"seed\": {seed}}}\n").as_bytes(),
        );
        self.ws.add_file(dir, "w.bin", &data);
        data
    }

    fn dir(&self, dir: &str) -> PathBuf {
        self.ws.models().join(dir)
    }

    /// The manifest entry `manifest build` makes for `models/<dir>`, served over HTTP.
    fn entry(&self, dir: &str, id: &str) -> String {
        self.ws.entry(
            dir,
            id,
            &[format!("{}/{dir}", self.server.url())],
            MIB as u64,
        )
    }

    /// `modelfs manifest build models/<dir> --id listed --chunk-list`, as a
    /// publisher runs it before signing, in chunks of `chunk`.
    fn build_listed(&self, dir: &str, chunk: &str) -> std::process::Output {
        let (source, path) = (format!("{}/{dir}", self.server.url()), self.dir(dir));
        let args: [&std::ffi::OsStr; 10] = [
            "manifest".as_ref(),
            "build".as_ref(),
            path.as_os_str(),
            "--id".as_ref(),
            "listed".as_ref(),
            "--source".as_ref(),
            source.as_ref(),
            "--chunk-size".as_ref(),
            chunk.as_ref(),
            "--chunk-list".as_ref(),
        ];
        let out = self.ws.modelfs().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The same workspace with its server gone: a server with nothing to
    /// serve in its place, which counts what it is asked.
    fn offline(self) -> Signed {
        drop(self.server);
        let server = RangeServer::start(&self.ws.path("nowhere"));
        Signed { server, ..self }
    }

    fn mount(&self, extra: &[&str]) -> Mount {
        let key = self.public.to_str().unwrap();
        let mut args = vec!["--trusted-key", key];
        args.extend_from_slice(extra);
        Mount::start(&self.ws, &args)
    }

    /// Requests the server had for paths under `/<dir>/`, bundle included.
    fn requests_for(&self, dir: &str) -> Vec<String> {
        let prefix = format!("/{dir}/");
        self.server
            .request_log()
            .into_iter()
            .filter(|r| r.starts_with(&prefix))
            .collect()
    }

    /// Bytes of `/<dir>/w.bin` the server was asked for.
    fn weight_bytes_asked(&self, dir: &str) -> u64 {
        let prefix = format!("/{dir}/w.bin ");
        self.server
            .request_log()
            .iter()
            .filter_map(|r| r.strip_prefix(&prefix)?.split_once('-'))
            .map(|(a, b)| b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1)
            .sum()
    }

    fn model_status(&self, id: &str) -> serde_json::Value {
        let status = self.ws.status();
        let models = status["models"].as_array().unwrap();
        models.iter().find(|m| m["id"] == id).unwrap().clone()
    }
}

/// 4 KiB of `path` at `at`, read through the mount.
fn piece_at(path: &Path, at: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0; 4096];
    fs::File::open(path)?.read_exact_at(&mut buf, at as u64)?;
    Ok(buf)
}

/// `entry` with the chunk hashes of `honest` (in `chunk`-byte chunks) from
/// chunk `from` on replaced by those of `evil`.
fn forge(entry: &str, honest: &[u8], evil: &[u8], chunk: usize, from: usize) -> String {
    let mut entry = entry.to_owned();
    for (h, e) in chunk_hashes(honest, chunk)
        .iter()
        .zip(chunk_hashes(evil, chunk))
        .skip(from)
    {
        entry = entry.replace(h, &e);
    }
    entry
}

fn assert_refused(path: &Path) {
    match fs::File::open(path) {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::PermissionDenied,
            "{}: {e}",
            path.display()
        ),
        Ok(_) => panic!(
            "{} opened, but its model's signature does not vouch for it",
            path.display()
        ),
    }
}

#[test]
fn a_signed_model_is_listed_offline_read_right_and_shown_verified() {
    let s = Signed::new();
    let weights = s.model("m", 3 * MIB + 123, 1);
    // Git's files, which the signer leaves out by default.
    s.ws.add_file("m", ".gitattributes", b"*.bin filter=lfs\n");
    s.signer.sign(&s.dir("m"), &s.private);
    let entry = s.entry("m", "signed");
    assert!(
        entry.contains("signature = \"model.sig\""),
        "manifest build names the bundle:\n{entry}"
    );
    assert!(
        !entry.contains("path = \"model.sig\""),
        "the bundle is not one of the files"
    );
    s.ws.write_manifest(&[entry]);
    let metrics = free_addr();
    let mnt = s.mount(&["--metrics-addr", &metrics]);

    // Listing, stat and the attribute touch no network.
    let names: Vec<_> = fs::read_dir(mnt.path("signed"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        fs::metadata(mnt.path("signed/w.bin")).unwrap().len(),
        weights.len() as u64
    );
    assert_eq!(
        xattr(&mnt.path("signed/w.bin"), SIGNATURE),
        "not checked yet"
    );
    assert_eq!(
        s.server.requests(),
        0,
        "a listing made requests: {:?}",
        s.server.request_log()
    );

    assert_eq!(fs::read(mnt.path("signed/w.bin")).unwrap(), weights);
    assert_eq!(
        fs::read(mnt.path("signed/config.json")).unwrap(),
        b"{\"seed\": 1}\n"
    );
    let verdict = format!("verified by {}", s.public.display());
    assert_eq!(xattr(&mnt.path("signed/w.bin"), SIGNATURE), verdict);
    assert_refused(&mnt.path("signed/.gitattributes"));
    let log = s.server.request_log();
    assert!(
        !log.iter().any(|r| r.contains(".gitattributes")),
        "an unsigned file was fetched: {log:?}"
    );
    let bundles = s
        .requests_for("m")
        .iter()
        .filter(|r| r.starts_with("/m/model.sig"))
        .count();
    assert_eq!(
        bundles,
        1,
        "the bundle is fetched once: {:?}",
        s.server.request_log()
    );
    let text = http_get(&metrics, "/metrics").1;
    assert_eq!(
        metric(&text, "modelfs_signature_checks_total{result=\"verified\"}"),
        1.0
    );
    assert_eq!(s.model_status("signed")["signature"], verdict);
    let ls = s.ws.run_ok(&["ls".as_ref()]);
    assert!(ls.contains(&verdict), "ls shows the signature:\n{ls}");
    drop(mnt);

    // A restart with no network: the kept bundle vouches for the cached model.
    let s = s.offline();
    let mnt = s.mount(&[]);
    assert_eq!(fs::read(mnt.path("signed/w.bin")).unwrap(), weights);
    assert_eq!(xattr(&mnt.path("signed/config.json"), SIGNATURE), verdict);
    assert_eq!(s.server.requests(), 0, "{:?}", s.server.request_log());
}

#[test]
fn a_manifest_that_changed_a_signed_digest_serves_nothing_of_the_model() {
    let s = Signed::new();
    s.model("m", 2 * MIB, 2);
    s.signer.sign(&s.dir("m"), &s.private);
    // The source and the manifest now agree on other bytes; the publisher
    // signed the old ones.
    s.ws.add_file("m", "config.json", b"{\"evil\": true}\n");
    s.ws.write_manifest(&[s.entry("m", "tampered")]);
    let mnt = s.mount(&[]);
    for _ in 0..3 {
        assert_refused(&mnt.path("tampered/config.json"));
        assert_refused(&mnt.path("tampered/w.bin"));
    }
    let asked = s.requests_for("m");
    assert_eq!(
        asked,
        ["/m/model.sig"],
        "only the bundle, once: no byte of the model"
    );
    let log = mnt.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("signature refused"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(
        line.contains("tampered") && line.contains("config.json: the manifest says sha256"),
        "the refusal names the model, the file and what differs: {line}"
    );
    assert_eq!(
        log.matches("signature refused").count(),
        1,
        "said once:\n{log}"
    );
    assert!(
        s.model_status("tampered")["signature"]
            .as_str()
            .unwrap()
            .starts_with("refused: config.json")
    );
    assert!(xattr(&mnt.path("tampered/w.bin"), SIGNATURE).starts_with("refused: "));

    // The manifest mended and reloaded: the model's new version is checked anew.
    s.ws.add_file("m", "config.json", b"{\"seed\": 2}\n");
    s.ws.write_manifest(&[s.entry("m", "tampered")]);
    s.ws.run_ok(&["reload".as_ref(), mnt.mountpoint.as_os_str()]);
    assert_eq!(
        fs::read(mnt.path("tampered/config.json")).unwrap(),
        b"{\"seed\": 2}\n"
    );
    assert!(xattr(&mnt.path("tampered/w.bin"), SIGNATURE).starts_with("verified by"));
}

/// Shards do not sign a file's whole sha256, by which the cache knows a
/// complete file: a manifest giving a signed file another cached file's
/// sha256 must not get that file served.
#[test]
fn a_complete_cached_file_is_checked_against_the_signed_shards() {
    let s = Signed::new();
    let other = s.model("other", 3 * MIB, 8);
    s.ws.write_manifest(&[s.entry("other", "other")]);
    {
        let mnt = s.mount(&[]);
        assert_eq!(fs::read(mnt.path("other/w.bin")).unwrap(), other);
    }
    s.model("sharded", 3 * MIB, 9);
    s.signer.sign_shards(&s.dir("sharded"), &s.private, MIB);
    let forged = s.entry("sharded", "sharded").replace(
        &sha256_hex(&fs::read(s.dir("sharded").join("w.bin")).unwrap()),
        &sha256_hex(&other),
    );
    s.ws.write_manifest(&[forged]);
    let mnt = s.mount(&[]);
    assert_refused(&mnt.path("sharded/w.bin"));
    assert!(
        mnt.log_text()
            .contains("sharded/w.bin: the cached file with its sha256 is not the signed one"),
        "{}",
        mnt.log_text()
    );
}

#[test]
fn a_bundle_by_another_key_or_edited_after_signing_is_refused() {
    let s = Signed::new();
    s.model("stranger", MIB, 3);
    let (other, _) = s.signer.keypair(&s.ws, "other");
    s.signer.sign(&s.dir("stranger"), &other);

    s.model("edited", MIB, 4);
    s.signer.sign(&s.dir("edited"), &s.private);
    let path = s.dir("edited").join("model.sig");
    let mut bundle: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let payload = STANDARD
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let payload = String::from_utf8(payload).unwrap();
    // One signed digest swapped for the other file's, as a forger would.
    let w = sha256_hex(&fs::read(s.dir("edited").join("w.bin")).unwrap());
    let config = sha256_hex(&fs::read(s.dir("edited").join("config.json")).unwrap());
    let forged = payload.replace(&config, &w);
    assert_ne!(forged, payload);
    bundle["dsseEnvelope"]["payload"] = STANDARD.encode(forged).into();
    fs::write(&path, bundle.to_string()).unwrap();

    s.ws.write_manifest(&[s.entry("stranger", "stranger"), s.entry("edited", "edited")]);
    let mnt = s.mount(&[]);
    assert_refused(&mnt.path("stranger/w.bin"));
    assert_refused(&mnt.path("edited/w.bin"));
    for id in ["stranger", "edited"] {
        let why = xattr(&mnt.path(&format!("{id}/w.bin")), SIGNATURE);
        assert!(
            why.starts_with("refused: not signed by a trusted key"),
            "{id}: {why}"
        );
        assert_eq!(s.weight_bytes_asked(id), 0, "{id}: no byte fetched");
    }
}

#[test]
fn unsigned_models_are_served_unless_signatures_are_required() {
    let s = Signed::new();
    let weights = s.model("plain", MIB, 5);
    s.ws.write_manifest(&[s.entry("plain", "plain")]);
    {
        let mnt = s.mount(&["--require-signatures"]);
        assert_refused(&mnt.path("plain/w.bin"));
        assert!(xattr(&mnt.path("plain/w.bin"), SIGNATURE).contains("--require-signatures"));
        assert_eq!(s.server.requests(), 0);
    }
    let mnt = s.mount(&[]);
    assert_eq!(fs::read(mnt.path("plain/w.bin")).unwrap(), weights);
    assert_eq!(xattr(&mnt.path("plain/w.bin"), SIGNATURE), "unsigned");
    assert_eq!(s.model_status("plain")["signature"], "unsigned");
}

/// Signed whole, a file is served once all of it verified; signed in
/// shards of its chunk size, a read fetches what it needs, as unsigned.
#[test]
fn shard_signatures_stay_lazy_and_whole_signatures_wait_for_the_file() {
    let s = Signed::new();
    let size = 8 * MIB;
    let whole = s.model("whole", size, 6);
    s.signer.sign(&s.dir("whole"), &s.private);
    let sharded = s.model("sharded", size, 7);
    s.signer.sign_shards(&s.dir("sharded"), &s.private, MIB);
    s.ws.write_manifest(&[s.entry("whole", "whole"), s.entry("sharded", "sharded")]);
    let mnt = s.mount(&[]);
    let at = 3 * size / 4;
    for (id, data) in [("whole", &whole), ("sharded", &sharded)] {
        let piece = piece_at(&mnt.path(&format!("{id}/w.bin")), at).unwrap();
        assert_eq!(piece, data[at..at + 4096], "{id}");
    }
    assert!(
        s.weight_bytes_asked("whole") >= size as u64,
        "signed whole: fetched whole first"
    );
    let lazy = s.weight_bytes_asked("sharded");
    assert!(
        lazy <= 4 * MIB as u64,
        "signed in shards: {lazy} bytes fetched for one 4 KiB read"
    );
    assert_eq!(fs::read(mnt.path("sharded/w.bin")).unwrap(), sharded);
    assert!(xattr(&mnt.path("sharded/w.bin"), SIGNATURE).starts_with("verified by"));
}

/// The chunk hashes of `data` in `chunk`-byte chunks, as a manifest lists them.
fn chunk_hashes(data: &[u8], chunk: usize) -> Vec<String> {
    data.chunks(chunk).map(sha256_hex).collect()
}

fn assert_never_served(path: &Path, wrong: &[u8]) {
    match fs::read(path) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", path.display()),
        Ok(data) => panic!(
            "{} read {} bytes{}",
            path.display(),
            data.len(),
            if data == wrong {
                ", the forged ones"
            } else {
                ""
            }
        ),
    }
}

/// The manifest keeps the signed sha256 but lists chunk hashes of other
/// bytes, which the source serves: chunk hashes nobody signed vouch for
/// nothing, so not a byte of them is served (signed whole: the file is
/// checked whole; signed in 1 MiB shards: each chunk against its shard,
/// whatever chunk size the manifest gives).
#[test]
fn chunk_hashes_the_signature_does_not_cover_vouch_for_nothing() {
    let s = Signed::new();
    let honest = s.model("whole", 3 * MIB, 10);
    s.signer.sign(&s.dir("whole"), &s.private);
    let shards = s.model("shards", 3 * MIB, 11);
    s.signer.sign_shards(&s.dir("shards"), &s.private, MIB);
    let evil_whole = sample_bytes(honest.len(), 12);
    let evil_shards = sample_bytes(shards.len(), 13);
    let whole_entry = forge(&s.entry("whole", "whole"), &honest, &evil_whole, MIB, 0);
    let shards_url = [format!("{}/shards", s.server.url())];
    let shards_entry = forge(
        &s.ws.entry("shards", "shards", &shards_url, 64 << 10),
        &shards,
        &evil_shards,
        64 << 10,
        0,
    );
    assert!(
        whole_entry.contains(&sha256_hex(&honest)),
        "the signed sha256 stays"
    );
    s.ws.write_manifest(&[whole_entry, shards_entry]);
    s.ws.add_file("whole", "w.bin", &evil_whole);
    s.ws.add_file("shards", "w.bin", &evil_shards);
    let mnt = s.mount(&[]);
    assert_never_served(&mnt.path("whole/w.bin"), &evil_whole);
    assert_never_served(&mnt.path("shards/w.bin"), &evil_shards);
    assert!(xattr(&mnt.path("whole/w.bin"), SIGNATURE).starts_with("verified by"));
}

/// A P-384 key, among others trusted; and `prefetch` under the same flags:
/// a verified model's link tree, and none left for a refused one.
#[test]
fn prefetch_checks_signatures_and_p384_keys_verify() {
    let s = Signed::new();
    let weights = s.model("m", MIB, 14);
    let (p384, p384_public) = s.signer.keypair(&s.ws, "p384-publisher");
    s.signer.sign(&s.dir("m"), &p384);
    s.ws.write_manifest(&[s.entry("m", "m")]);
    let prefetch = |keys: &[&Path]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["prefetch".as_ref(), "m".as_ref()];
        for key in keys {
            args.extend(["--trusted-key".as_ref(), key.as_os_str()]);
        }
        s.ws.modelfs().args(args).output().unwrap()
    };
    let out = prefetch(&[&s.public, &p384_public]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = s.ws.cache().join("models/m");
    assert_eq!(fs::read(tree.join("w.bin")).unwrap(), weights);
    let verdict = format!("verified by {}", p384_public.display());
    assert_eq!(s.model_status("m")["signature"], verdict);
    let verify = |key: &Path| {
        let args: [&std::ffi::OsStr; 4] = [
            "verify".as_ref(),
            "m".as_ref(),
            "--trusted-key".as_ref(),
            key.as_os_str(),
        ];
        s.ws.modelfs().args(args).output().unwrap()
    };
    let out = verify(&p384_public);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = verify(&s.public);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("m: BAD: signature refused: not signed by a trusted key")
    );

    let out = prefetch(&[&s.public]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prefetch m: signature refused: not signed by a trusted key"),
        "{stderr}"
    );
    assert!(!tree.exists(), "the link tree of a refused model is gone");
}

/// In the hub layout, models of one repo share a blob: a signed model's
/// blob is read as its signature binds it, whichever model the blob's
/// node was made for.
#[test]
fn a_blob_shared_in_the_hub_layout_is_bound_by_the_signed_model() {
    let s = Signed::new();
    let honest = s.model("signed", 3 * MIB, 15);
    s.signer.sign(&s.dir("signed"), &s.private);
    // An unsigned model of the same repo claims the same sha256, with chunk
    // hashes of other bytes that its own source serves; it comes first, so
    // the blob's node is its.
    let evil = sample_bytes(honest.len(), 16);
    s.ws.add_file("other", "w.bin", &evil);
    let mut other = s
        .entry("other", "other")
        .replace(&sha256_hex(&evil), &sha256_hex(&honest));
    other = other.replacen(
        "sources =",
        &format!(
            "repo = \"org/x\"\nrevision = \"{}\"\nsources =",
            "a".repeat(40)
        ),
        1,
    );
    let signed = s.entry("signed", "signed").replacen(
        "sources =",
        &format!(
            "repo = \"org/x\"\nrevision = \"{}\"\nsources =",
            "b".repeat(40)
        ),
        1,
    );
    s.ws.write_manifest(&[other, signed]);
    let mnt = s.mount(&["--layout", "hf"]);
    let path = mnt.path(&format!(
        "models--org--x/snapshots/{}/w.bin",
        "b".repeat(40)
    ));
    assert_eq!(fs::read(&path).unwrap(), honest);
}

/// The publisher's way to lazy reads with the `model_signing` CLI: `manifest
/// build --chunk-list` writes the chunk hashes beside the files, the CLI
/// signs them with the model, and a mount reads it chunk by chunk, bound to
/// them; also with no network once what it needs is kept.
#[test]
fn a_signed_chunk_list_makes_a_model_signed_whole_lazy() {
    let s = Signed::new();
    let size = 8 * MIB;
    let data = s.model("m", size, 17);
    let entry = String::from_utf8(s.build_listed("m", "1M").stdout).unwrap();
    assert!(entry.contains("signature = \"model.sig\""), "{entry}");
    assert!(s.dir("m").join("modelfs-chunks.json").exists());
    s.signer.sign(&s.dir("m"), &s.private);
    // The manifest's own chunk hashes are forged and the source serves
    // those bytes, past the part read first: only the signed list counts.
    let evil = sample_bytes(size, 18);
    s.ws.write_manifest(&[forge(&entry, &data, &evil, MIB, 4)]);
    let at = 3 * size / 4;
    {
        let mnt = s.mount(&[]);
        assert_eq!(
            piece_at(&mnt.path("listed/w.bin"), at).unwrap(),
            data[at..at + 4096]
        );
        let lazy = s.weight_bytes_asked("m");
        assert!(
            lazy <= 4 * MIB as u64,
            "{lazy} bytes fetched for one 4 KiB read"
        );
        assert!(xattr(&mnt.path("listed/w.bin"), SIGNATURE).starts_with("verified by"));

        // Chunk 4, not read yet: the source now serves the bytes the
        // forged manifest vouches for, which the signed list does not.
        let mut evil_data = data.clone();
        evil_data[4 * MIB..5 * MIB].copy_from_slice(&evil[4 * MIB..5 * MIB]);
        s.ws.add_file("m", "w.bin", &evil_data);
        let read = piece_at(&mnt.path("listed/w.bin"), 4 * MIB);
        assert_eq!(
            read.unwrap_err().raw_os_error(),
            Some(libc::EIO),
            "bytes the list does not vouch for"
        );
    }
    let s = s.offline();
    let mnt = s.mount(&[]);
    assert_eq!(
        piece_at(&mnt.path("listed/w.bin"), at).unwrap(),
        data[at..at + 4096]
    );
    assert_eq!(s.server.requests(), 0, "{:?}", s.server.request_log());
}

/// A chunk list at the source that is not the signed one (rebuilt after
/// signing, or forged) is passed over: the files, signed whole too, are
/// then verified whole, and the log says why.
#[test]
fn a_chunk_list_other_than_the_signed_one_leaves_files_verified_whole() {
    let s = Signed::new();
    let size = 4 * MIB;
    let data = s.model("m", size, 19);
    let built = s.build_listed("m", "1M");
    let advice = String::from_utf8_lossy(&built.stderr);
    assert!(
        advice.contains("model_signing sign key"),
        "the next step is said: {advice}"
    );
    s.signer.sign(&s.dir("m"), &s.private);
    let rebuilt = s.build_listed("m", "256K");
    let warned = String::from_utf8_lossy(&rebuilt.stderr);
    assert!(warned.contains("was made before this list"), "{warned}");
    s.ws.write_manifest(&[String::from_utf8(rebuilt.stdout).unwrap()]);
    let mnt = s.mount(&[]);
    let at = 3 * size / 4;
    assert_eq!(
        piece_at(&mnt.path("listed/w.bin"), at).unwrap(),
        data[at..at + 4096]
    );
    assert!(s.weight_bytes_asked("m") >= size as u64, "verified whole");
    assert!(
        mnt.log_text()
            .contains("cannot be had, so its files are verified whole"),
        "{}",
        mnt.log_text()
    );
}

/// The kernel keeps a file's pages by inode: a reload that changes how a
/// file is verified (its chunk hashes, its model's bundle) gives it a new
/// one, so no page verified the old way is served as verified the new way.
#[test]
fn a_reload_that_changes_how_a_file_is_verified_gives_it_a_new_inode() {
    use std::os::unix::fs::MetadataExt;
    let s = Signed::new();
    let data = s.model("m", 2 * MIB, 20);
    s.ws.write_manifest(&[s.entry("m", "m")]);
    let mnt = s.mount(&[]);
    assert_eq!(fs::read(mnt.path("m/w.bin")).unwrap(), data);
    let ino = || fs::metadata(mnt.path("m/w.bin")).unwrap().ino();
    let (first, config) = (
        ino(),
        fs::metadata(mnt.path("m/config.json")).unwrap().ino(),
    );
    let source = format!("{}/m", s.server.url());
    s.ws.write_manifest(&[s.ws.entry("m", "m", &[source], 256 << 10)]);
    s.ws.run_ok(&["reload".as_ref(), mnt.mountpoint.as_os_str()]);
    assert_ne!(ino(), first, "chunked anew");
    assert_eq!(
        fs::metadata(mnt.path("m/config.json")).unwrap().ino(),
        config,
        "one chunk either way: kept"
    );
    assert_eq!(fs::read(mnt.path("m/w.bin")).unwrap(), data);
}
