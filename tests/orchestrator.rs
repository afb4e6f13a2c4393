//! The Model Orchestrator's models.toml, read as it is: the shared fixture
//! checks, and a manifest in its format with local://, S3 and HTTP sources
//! mounts and reads byte-exact, a model under the local root fetching
//! nothing over the network.

mod support;

use std::fs;
use std::path::Path;

use support::s3_server::S3Server;
use support::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/orchestrator-models.toml"
);

/// The seed's own models.toml has digests that cannot be right (the empty
/// file's on 47- and 265-byte files, all zeros on another, one sha256 with
/// two sizes, more than once): every read of those files would fail, so
/// `manifest check` refuses it, located, the next once the first is mended.
/// (All zeros, its third kind, is refused in `manifest::raw`'s tests.)
#[test]
fn the_orchestrator_fixture_is_refused_for_its_impossible_digests() {
    let ws = Workspace::new();
    let check = |text: &str| {
        let path = ws.path("check.toml");
        fs::write(&path, text).unwrap();
        let out = ws
            .modelfs()
            .args([
                "manifest".as_ref(),
                "check".as_ref(),
                "-m".as_ref(),
                path.as_os_str(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let text = fs::read_to_string(FIXTURE).unwrap();
    let said = check(&text);
    assert!(
        said.contains("check.toml:39:10: models.\"t2v-A14B@2.2.0\".files[0].sha256: the empty file's sha256, but size = 47"),
        "{said}"
    );
    let text = text.replace(empty, &sha256_hex(b"a config"));
    let said = check(&text);
    assert!(said.contains("check.toml:107:10: models.\"i2v-A14B@2.2.0\".files[1].sha256: this sha256 was given before with size = 335544320, here 507609880"), "{said}");
}

/// `[models."<id>"]` with descriptive keys, files and sources, as the
/// orchestrator writes it.
fn orchestrator_model(id: &str, files: &[(&str, &[u8], &str)], sources: &[String]) -> String {
    let mut text = format!(
        "[models.\"{id}\"]\ndescription = \"{id}\"\nversion = \"2.2.0\"\n\
         variants = [\"fp16\", \"bf16\"]\nrequired_components = [\"config\"]\n\n\
         [models.\"{id}\".defaults]\nfps = 24\n\n"
    );
    for (path, data, component) in files {
        text.push_str(&format!(
            "[[models.\"{id}\".files]]\npath = \"{path}\"\nsize = {}\nsha256 = \"{}\"\ncomponent = \"{component}\"\n\n",
            data.len(),
            sha256_hex(data)
        ));
    }
    let list: Vec<String> = sources.iter().map(|s| format!("\"{s}\"")).collect();
    text.push_str(&format!(
        "[models.\"{id}\".sources]\npriority = [{}]\n",
        list.join(", ")
    ));
    text
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

#[test]
fn an_orchestrator_manifest_mounts_and_reads_from_local_s3_and_http() {
    let ws = Workspace::new();
    let config = br#"{"model_type": "wan"}"#.to_vec();
    let vae = sample_bytes(3 << 20, 61);
    let weights = sample_bytes((5 << 20) + 17, 62);
    // local@1 sits under the local root; remote@1 only in the bucket; both
    // on the HTTP mirror (ws.models() holds the bucket's directory).
    let root = ws.path("models-root");
    write(&root, "wan22/local@1/configuration.json", &config);
    write(&root, "wan22/local@1/Wan2.1_VAE.pth", &vae);
    for (id, rel, data) in [
        ("local@1", "configuration.json", &config),
        ("local@1", "Wan2.1_VAE.pth", &vae),
        ("remote@1", "configuration.json", &config),
        ("remote@1", "model.safetensors", &weights),
    ] {
        write(&ws.models(), &format!("ai-models/wan22/{id}/{rel}"), data);
    }
    let s3 = S3Server::start(&ws.models());
    let http = RangeServer::start(&ws.models());
    let sources = |id: &str| {
        vec![
            format!("local://wan22/{id}"),
            format!("s3://ai-models/wan22/{id}"),
            format!("{}/ai-models/wan22/{id}", http.url()),
        ]
    };
    let text = format!(
        "# WAN2.2 Model Manifest\nschema_version = 1\n\n{}\n{}",
        orchestrator_model(
            "local@1",
            &[
                ("configuration.json", &config, "config"),
                ("Wan2.1_VAE.pth", &vae, "vae")
            ],
            &sources("local@1"),
        ),
        orchestrator_model(
            "remote@1",
            &[
                ("configuration.json", &config, "config"),
                ("model.safetensors", &weights, "transformer"),
            ],
            &sources("remote@1"),
        ),
    );
    let manifest = ws.path("models.toml");
    fs::write(&manifest, text).unwrap();

    // Found through the orchestrator's own variable, and checked.
    let out = ws
        .modelfs()
        .env_remove("MODELFS_MANIFEST")
        .env("WAN_MODELS_MANIFEST", &manifest)
        .args(["manifest", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let addr = free_addr();
    let m = Mount::start_with_env(
        &ws,
        &[
            "-m",
            manifest.to_str().unwrap(),
            "--local-root",
            root.to_str().unwrap(),
            "--metrics-addr",
            &addr,
        ],
        &env,
    );
    for (rel, data) in [
        ("local@1/configuration.json", &config),
        ("local@1/Wan2.1_VAE.pth", &vae),
        ("remote@1/configuration.json", &config),
        ("remote@1/model.safetensors", &weights),
    ] {
        assert!(fs::read(m.path(rel)).unwrap() == *data, "{rel}");
    }
    let metrics = http_get(&addr, "/metrics").1;
    let from = |source: &str| {
        metric(
            &metrics,
            &format!("modelfs_fetch_bytes_total{{source=\"{source}\"}}"),
        )
    };
    assert_eq!(
        from("file"),
        (config.len() + vae.len()) as f64,
        "local@1 from the local root"
    );
    // Its configuration.json is local@1's (same sha256): stored once, read from the cache.
    assert_eq!(
        from("s3://ai-models"),
        weights.len() as f64,
        "remote@1's weights from S3"
    );
    assert_eq!(http.bytes_sent(), 0, "nothing over HTTP");
}

#[test]
fn without_a_local_root_local_sources_are_skipped_with_one_warning() {
    let ws = Workspace::new();
    let data = sample_bytes(100_000, 63);
    write(&ws.models(), "m@1/w.bin", &data);
    let http = RangeServer::start(&ws.models());
    let text = format!(
        "schema_version = 1\n{}",
        orchestrator_model(
            "m@1",
            &[("w.bin", &data, "transformer")],
            &["local://m@1".into(), format!("{}/m@1", http.url())],
        )
    );
    fs::write(ws.path("manifest.toml"), text).unwrap();
    let m = ws.mount();
    assert!(fs::read(m.path("m@1/w.bin")).unwrap() == data);
    let log = m.log_text();
    assert_eq!(
        log.matches("local:// sources are skipped").count(),
        1,
        "{log}"
    );
    assert!(log.contains("--local-root"));
}

#[test]
fn optional_files_absent_everywhere_are_skipped_and_components_shown() {
    let ws = Workspace::new();
    let config = b"{}".to_vec();
    let vae = sample_bytes(70_000, 64);
    // The optional VAE exists at no source.
    write(&ws.models(), "m@1/configuration.json", &config);
    let http = RangeServer::start(&ws.models());
    let mut text = format!(
        "schema_version = 1\n{}",
        orchestrator_model(
            "m@1",
            &[
                ("configuration.json", &config, "config"),
                ("Wan2.1_VAE.pth", &vae, "vae")
            ],
            &[format!("{}/m@1", http.url())],
        )
    );
    text = text.replace(
        "component = \"vae\"\n",
        "component = \"vae\"\noptional = true\n",
    );
    fs::write(ws.path("manifest.toml"), text).unwrap();

    let out = ws.modelfs().args(["prefetch", "m@1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("optional file Wan2.1_VAE.pth is absent at every source"),
        "{err}"
    );
    let tree = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(fs::read(Path::new(&tree).join("configuration.json")).unwrap() == config);
    assert!(!Path::new(&tree).join("Wan2.1_VAE.pth").exists());

    let status = ws.status();
    let model = &status["models"][0];
    assert_eq!(
        model["details"]["variants"],
        serde_json::json!(["fp16", "bf16"])
    );
    assert_eq!(model["details"]["defaults"]["fps"], 24);
    assert_eq!(model["files"][1]["component"], "vae");
    assert_eq!(model["files"][1]["optional"], true);
    assert_eq!(model["files"][1]["verified"], "whole");
    let ls = ws.run_ok(&["ls".as_ref(), "m@1".as_ref()]);
    assert!(
        ls.contains("vae (optional)") && ls.contains("variants: [\"fp16\", \"bf16\"]"),
        "{ls}"
    );

    let m = ws.mount();
    assert_eq!(
        xattr(&m.path("m@1/configuration.json"), "user.modelfs.component"),
        "config"
    );
    let err = fs::read(m.path("m@1/Wan2.1_VAE.pth"))
        .map(drop)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        m.log_text()
            .contains("optional file is absent at every source")
    );
}

#[test]
fn manifest_chunk_adds_chunk_hashes_and_leaves_the_cache_warm() {
    use std::os::unix::fs::FileExt;
    let ws = Workspace::new();
    let config = br#"{"a": 1}"#.to_vec();
    let weights = sample_bytes((3 << 20) + 5, 65);
    write(&ws.models(), "m@1/configuration.json", &config);
    write(&ws.models(), "m@1/w.bin", &weights);
    let http = RangeServer::start(&ws.models());
    let text = format!(
        "# kept as written\nschema_version = 1\n{}",
        orchestrator_model(
            "m@1",
            &[
                ("configuration.json", &config, "config"),
                ("w.bin", &weights, "transformer")
            ],
            &[format!("{}/m@1", http.url())],
        )
    );
    fs::write(ws.path("manifest.toml"), text).unwrap();

    let chunked = ws.run_ok(&["manifest", "chunk", "--chunk-size", "1M"].map(AsRef::as_ref));
    assert!(chunked.starts_with("# kept as written\n"), "{chunked}");
    assert_eq!(chunked.matches("chunk_size = 1048576").count(), 2);
    assert_eq!(
        http.bytes_sent(),
        (config.len() + weights.len()) as u64,
        "each file fetched once"
    );
    fs::write(ws.path("manifest.toml"), &chunked).unwrap();
    let ls = ws.run_ok(&["ls".as_ref(), "m@1".as_ref()]);
    assert!(ls.contains("chunks") && !ls.contains("whole"), "{ls}");

    // The cache already holds the files: the first mount reads them warm.
    http.reset_counters();
    {
        let m = ws.mount();
        assert!(fs::read(m.path("m@1/w.bin")).unwrap() == weights);
        assert_eq!(http.bytes_sent(), 0);
    }
    // A cache without them reads lazily now: a 4 KiB read fetches about a chunk.
    let other = ws.path("other-cache");
    let m = Mount::start_with_env(&ws, &[], &[("MODELFS_CACHE_DIR", other.to_str().unwrap())]);
    let mut piece = [0u8; 4096];
    fs::File::open(m.path("m@1/w.bin"))
        .unwrap()
        .read_exact_at(&mut piece, 2 << 20)
        .unwrap();
    assert!(piece[..] == weights[2 << 20..(2 << 20) + 4096]);
    assert!(
        http.bytes_sent() <= 2 << 20,
        "fetched {}",
        http.bytes_sent()
    );
}

/// The seed's models rely on `allow_patterns` with a Hugging Face source for
/// the files they do not list. `manifest expand` adds every file of the
/// repo a pattern matches (from the hub's API: the LFS ones without a
/// download); the result mounts with all of them, and lists with no network.
#[test]
fn allow_patterns_are_expanded_from_the_hubs_listing() {
    let ws = Workspace::new();
    let config = br#"{"model_type": "wan"}"#.to_vec();
    let weights = sample_bytes(3 * (1 << 20) + 5, 71);
    let vae = sample_bytes(1 << 20, 72);
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let lfs = |path: &str, data: &[u8]| {
        format!(
            r#"{{"rfilename": "{path}", "size": {n}, "lfs": {{"sha256": "{}", "size": {n}}}}}"#,
            sha256_hex(data),
            n = data.len()
        )
    };
    let api = format!(
        r#"{{"id": "org/wan", "sha": "{commit}", "siblings": [
            {{"rfilename": "config.json", "size": {}}},
            {{"rfilename": "README.md", "size": 5}},
            {}, {}]}}"#,
        config.len(),
        lfs("model.safetensors", &weights),
        lfs("vae/diffusion_pytorch_model.safetensors", &vae),
    );
    let hub = ws.models().join("hub");
    write(&hub, "api/models/org/wan/revision/main", api.as_bytes());
    for (path, data) in [
        ("config.json", &config),
        ("model.safetensors", &weights),
        ("vae/diffusion_pytorch_model.safetensors", &vae),
    ] {
        write(&hub, &format!("org/wan/resolve/{commit}/{path}"), data);
        write(&hub, &format!("org/wan/resolve/main/{path}"), data);
    }
    let hub = RangeServer::start(&hub);
    // Lists only its config; the patterns bring the weights, not the README.
    let model = orchestrator_model(
        "wan@1",
        &[("config.json", &config, "config")],
        &["hf://org/wan@main".to_owned()],
    )
    .replace(
        "required_components",
        "allow_patterns = [\"*.safetensors\", \"*.json\"]\nrequired_components",
    );
    let manifest = ws.path("models.toml");
    fs::write(&manifest, format!("schema_version = 1\n\n{model}")).unwrap();

    let out = ws
        .modelfs()
        .env("HF_ENDPOINT", hub.url())
        .args([
            "manifest".as_ref(),
            "expand".as_ref(),
            "-m".as_ref(),
            manifest.as_os_str(),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("wan@1: 2 files added"), "{said}");
    assert_eq!(
        hub.bytes_sent(),
        api.len() as u64,
        "LFS files described by the API alone"
    );
    let expanded = ws.path("models.expanded.toml");
    fs::write(&expanded, &out.stdout).unwrap();

    hub.reset_counters();
    let listed = ws.run_ok(&[
        "ls".as_ref(),
        "wan@1".as_ref(),
        "-m".as_ref(),
        expanded.as_os_str(),
    ]);
    for path in [
        "config.json",
        "model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        assert!(listed.contains(path), "{listed}");
    }
    assert!(!listed.contains("README"), "{listed}");
    assert_eq!(hub.requests(), 0, "ls asked the hub");

    let m = Mount::start_with_env(
        &ws,
        &["-m", expanded.to_str().unwrap()],
        &[("HF_ENDPOINT", &hub.url())],
    );
    assert!(fs::read(m.path("wan@1/model.safetensors")).unwrap() == weights);
    assert!(fs::read(m.path("wan@1/vae/diffusion_pytorch_model.safetensors")).unwrap() == vae);
    assert!(fs::read(m.path("wan@1/config.json")).unwrap() == config);
}
