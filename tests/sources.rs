//! Source schemes beyond plain HTTP, against local servers that speak their
//! URL schemes.

mod support;

use std::fs;

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
