//! Source schemes beyond plain HTTP, against local servers that speak their
//! URL schemes.

mod support;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use support::s3_server::{self, S3Server};
use support::*;

const MIB: u64 = 1 << 20;

/// A hub on one port that redirects to a CDN on another, like the public hub.
struct Hub {
    ws: Workspace,
    hub: RangeServer,
    cdn: RangeServer,
    data: Vec<u8>,
}

fn hub() -> Hub {
    let ws = Workspace::new();
    let data = sample_bytes(3 * MIB as usize, 11);
    // The CDN serves the hub's paths: /org/repo/resolve/main/w.bin.
    ws.add_file("cdn", "org/repo/resolve/main/w.bin", &data);
    let cdn = RangeServer::start(&ws.models().join("cdn"));
    let hub = RangeServer::start(&ws.models().join("cdn"));
    hub.redirect_to(Some(cdn.url()));
    let entry = ws.entry(
        "cdn/org/repo/resolve/main",
        "repo@main",
        &["hf://org/repo".into()],
        MIB,
    );
    ws.write_manifest(&[entry]);
    Hub { ws, hub, cdn, data }
}

#[test]
fn hf_follows_the_hub_redirect_and_keeps_the_token_from_the_cdn() {
    let h = hub();
    h.hub.require_bearer(Some("secret-token"));
    let endpoint = h.hub.url();
    let m = Mount::start_with_env(
        &h.ws,
        &[],
        &[("HF_ENDPOINT", &endpoint), ("HF_TOKEN", "secret-token")],
    );
    assert_eq!(fs::read(m.path("repo@main/w.bin")).unwrap(), h.data);
    let hub_log = h.hub.request_log();
    assert!(
        !hub_log.is_empty() && hub_log.iter().all(|r| r.ends_with("[auth]")),
        "{hub_log:?}"
    );
    let cdn_log = h.cdn.request_log();
    assert!(!cdn_log.is_empty(), "bytes came from the CDN");
    assert!(
        cdn_log.iter().all(|r| !r.contains("[auth]")),
        "token leaked to the CDN: {cdn_log:?}"
    );
    assert!(
        !m.log_text().contains("secret-token"),
        "the token never appears in logs"
    );
}

#[test]
fn hf_without_access_names_hf_token() {
    let h = hub();
    h.hub.require_bearer(Some("secret-token"));
    let endpoint = h.hub.url();
    let m = Mount::start_with_env(&h.ws, &[], &[("HF_ENDPOINT", &endpoint)]);
    let err = fs::read(m.path("repo@main/w.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(m.log_text().contains("set HF_TOKEN"), "{}", m.log_text());
}

/// A model stored as bucket `weights` of a real S3 server, and in plain files
/// for an HTTP mirror.
fn s3_model() -> (Workspace, S3Server, Vec<u8>) {
    let ws = Workspace::new();
    let data = sample_bytes(3 * MIB as usize + 12_345, 21);
    ws.add_file("weights", "sub/w.bin", &data);
    let s3 = S3Server::start(&ws.models());
    (ws, s3, data)
}

#[test]
fn s3_reads_ranges_with_signed_requests() {
    let (ws, s3, data) = s3_model();
    ws.write_manifest(&[ws.entry("weights", "w", &["s3://weights".into()], MIB)]);
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let addr = free_addr();
    let m = Mount::start_with_env(&ws, &["--metrics-addr", &addr], &env);

    let mut piece = vec![0u8; 4096];
    let at = 2 * MIB + 5;
    File::open(m.path("w/sub/w.bin"))
        .unwrap()
        .read_exact_at(&mut piece, at)
        .unwrap();
    assert_eq!(piece, data[at as usize..at as usize + 4096]);
    assert_eq!(fs::read(m.path("w/sub/w.bin")).unwrap(), data);

    let metrics = http_get(&addr, "/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            r#"modelfs_fetch_bytes_total{source="s3://weights"}"#
        ),
        data.len() as f64,
        "every chunk once, from S3"
    );
    let log = m.log_text();
    for secret in [s3_server::SECRET_KEY, "X-Amz-Signature"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// Reads through a mount whose S3 credentials are `env`: the S3 server
/// refuses, the HTTP mirror behind it serves, and the log says why.
fn s3_refused_then_mirror(env: &[(&str, &str)], expect_in_log: &[&str]) {
    let (ws, s3, data) = s3_model();
    let http = RangeServer::start(&ws.models());
    let sources = ["s3://weights".into(), format!("{}/weights", http.url())];
    ws.write_manifest(&[ws.entry("weights", "w", &sources, MIB)]);
    let endpoint = s3.endpoint();
    let mut env = env.to_vec();
    env.push(("AWS_ENDPOINT_URL", &endpoint));
    let m = Mount::start_with_env(&ws, &[], &env);
    assert_eq!(fs::read(m.path("w/sub/w.bin")).unwrap(), data);
    let log = m.log_text();
    for text in expect_in_log {
        assert!(log.contains(text), "{text:?} not in the log:\n{log}");
    }
    for (_, value) in env.iter().filter(|(k, _)| k.contains("SECRET")) {
        assert!(!log.contains(value), "the secret is in the log");
    }
}

#[test]
fn s3_wrong_secret_names_the_credentials_and_fails_over() {
    s3_refused_then_mirror(
        &[
            ("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123"),
        ],
        &["HTTP 403 SignatureDoesNotMatch", "check AWS_ACCESS_KEY_ID"],
    );
}

#[test]
fn s3_unsigned_request_says_it_was_unsigned() {
    s3_refused_then_mirror(&[], &["HTTP 403 AccessDenied", "the request was unsigned"]);
}

#[test]
fn proxies_come_from_the_environment_and_no_proxy_is_honoured() {
    let ws = Workspace::new();
    let data = sample_bytes(2 * MIB as usize + 7, 31);
    let other = sample_bytes(MIB as usize, 32);
    ws.add_file("weights", "w.bin", &data);
    ws.add_file("local", "w.bin", &other);
    let proxy = RangeServer::start(&ws.models());
    let direct = RangeServer::start(&ws.models());
    // Nothing listens on 127.0.0.2:9: only the proxy can answer for it.
    let far = ws.entry(
        "weights",
        "far",
        &["http://127.0.0.2:9/weights".into()],
        MIB,
    );
    let near = ws.entry("local", "near", &[format!("{}/local", direct.url())], MIB);
    ws.write_manifest(&[far, near]);
    let proxy_url = proxy.url();
    let m = Mount::start_with_env(
        &ws,
        &[],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "127.0.0.1")],
    );
    assert_eq!(fs::read(m.path("far/w.bin")).unwrap(), data);
    assert_eq!(fs::read(m.path("near/w.bin")).unwrap(), other);
    let proxied = proxy.request_log();
    assert!(
        !proxied.is_empty()
            && proxied
                .iter()
                .all(|r| r.ends_with("[proxy for 127.0.0.2:9]")),
        "{proxied:?}"
    );
    let direct_log = direct.request_log();
    assert!(
        !direct_log.is_empty() && direct_log.iter().all(|r| !r.contains("[proxy")),
        "{direct_log:?}"
    );
}

#[test]
fn manifest_build_hf_describes_a_repo_from_the_hub_api() {
    let ws = Workspace::new();
    let config = br#"{"model_type": "bert"}"#.to_vec();
    let weights = sample_bytes(2 * MIB as usize + 3, 66);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    // The hub, from files: the API's answer, and the files under resolve/.
    let api = format!(
        r#"{{"id": "org/repo", "sha": "{commit}", "siblings": [
            {{"rfilename": "config.json", "size": {}}},
            {{"rfilename": "model.safetensors", "size": {n},
              "lfs": {{"sha256": "{}", "size": {n}, "pointerSize": 134}}}}]}}"#,
        config.len(),
        sha256_hex(&weights),
        n = weights.len(),
    );
    ws.add_file("hub", "api/models/org/repo/revision/main", api.as_bytes());
    ws.add_file(
        "hub",
        &format!("org/repo/resolve/{commit}/config.json"),
        &config,
    );
    ws.add_file(
        "hub",
        &format!("org/repo/resolve/{commit}/model.safetensors"),
        &weights,
    );
    let hub = RangeServer::start(&ws.models().join("hub"));

    let out = ws
        .modelfs()
        .env("HF_ENDPOINT", hub.url())
        .args(["manifest", "build", "--hf", "org/repo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = String::from_utf8(out.stdout).unwrap();
    assert!(entry.contains("id = \"repo\""), "{entry}");
    assert!(entry.contains("repo = \"org/repo\""), "{entry}");
    assert!(
        entry.contains(&format!("revision = \"{commit}\"")),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("sources = [\"hf://org/repo@{commit}\"]")),
        "{entry}"
    );
    assert!(
        entry.contains(&sha256_hex(&config)),
        "the small file was hashed"
    );
    assert_eq!(
        hub.bytes_sent(),
        (api.len() + config.len()) as u64,
        "the LFS file's hash came from the API, not a download"
    );

    // Options are checked as the manifest will check them, before the hub is asked.
    hub.reset_counters();
    let bad = ws
        .modelfs()
        .env("HF_ENDPOINT", hub.url())
        .args(["manifest", "build", "--hf", "org/repo", "--chunk-size", "3"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--chunk-size"));
    assert_eq!(hub.requests(), 0);

    ws.write_manifest(&[entry]);
    let m = Mount::start_with_env(&ws, &[], &[("HF_ENDPOINT", &hub.url())]);
    assert!(fs::read(m.path("repo/config.json")).unwrap() == config);
    assert!(fs::read(m.path("repo/model.safetensors")).unwrap() == weights);
}
