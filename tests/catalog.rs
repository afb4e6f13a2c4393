//! A catalog named by URL: `-m https://…` mounts from the manifest fetched
//! there, keeps its last good copy in the cache dir, and a restart with the
//! origin unreachable mounts from that copy; `ls` and `status` read it
//! without the network.

mod support;

use std::fs;

use support::range_server::Fault;
use support::*;

const MIB: u64 = 1 << 20;

#[test]
fn a_manifest_named_by_url_is_kept_for_a_start_with_no_network() {
    let ws = Workspace::new();
    let data = sample_bytes(3 * MIB as usize, 7);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    let entry = ws.entry("m", "m", &[format!("{}/m", server.url())], MIB);
    fs::write(ws.models().join("catalog.toml"), manifest_text(&[entry])).unwrap();
    let url = format!("{}/catalog.toml", server.url());

    let mut first = Mount::start(&ws, &["-m", &url]);
    assert!(fs::read(first.path("m/w.bin")).unwrap() == data);
    first.signal_and_wait(libc::SIGTERM);

    // The origin answers nothing but errors now.
    server.set_always(Some(Fault::Status(500)));
    let m = Mount::start(&ws, &["-m", &url]);
    assert!(
        m.log_text()
            .contains("using the copy kept from the last time"),
        "{}",
        m.log_text()
    );
    assert_eq!(
        fs::metadata(m.path("m/w.bin")).unwrap().len(),
        data.len() as u64
    );
    assert!(
        fs::read(m.path("m/w.bin")).unwrap() == data,
        "served from the cache"
    );

    // ls and status read the kept copy: no request at all.
    let asked = server.requests();
    let listed = ws.run_ok(&["ls".as_ref(), "-m".as_ref(), url.as_ref()]);
    assert!(listed.contains("m"), "{listed}");
    ws.run_ok(&["status".as_ref(), "-m".as_ref(), url.as_ref()]);
    assert_eq!(
        server.requests(),
        asked,
        "ls and status touched the network"
    );
    drop(m);

    // Reachable again, with a manifest that does not parse: the kept copy
    // still serves, and the log says where the new one is wrong.
    server.set_always(None);
    fs::write(
        ws.models().join("catalog.toml"),
        "version = 1
[[model]
",
    )
    .unwrap();
    let addr = free_addr();
    let m = Mount::start(&ws, &["-m", &url, "--metrics-addr", &addr]);
    let log = m.log_text();
    let located = format!("{url}:2:");
    assert!(
        log.contains("using the copy kept") && log.contains(&located),
        "{log}"
    );
    assert!(fs::read(m.path("m/w.bin")).unwrap() == data);
    let health = healthz(&addr);
    let catalog = &health["catalog"];
    assert_eq!(catalog["generation"], 1);
    assert_eq!(catalog["source"], url.as_str());
    assert!(
        catalog["error"]
            .as_str()
            .is_some_and(|e| e.contains(&located)),
        "{catalog}"
    );
    let status = ws.run_ok(&[
        "status".as_ref(),
        "--json".as_ref(),
        "-m".as_ref(),
        url.as_ref(),
    ]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["mounts"][0]["manifest"], url.as_str());
}

#[test]
fn a_manifest_url_never_fetched_and_unreachable_is_a_clear_error() {
    let ws = Workspace::new();
    let url = "http://127.0.0.1:1/catalog.toml";
    let out = ws.modelfs().args(["ls", "-m", url]).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("cannot fetch the manifest {url}")),
        "{said}"
    );
}

/// The same from an S3-compatible store: `-m s3://bucket/key`, signed with
/// the sources' credentials.
#[test]
fn a_manifest_in_a_bucket_mounts() {
    let ws = Workspace::new();
    let data = sample_bytes(2 * MIB as usize, 8);
    ws.add_file("bucket/m", "w.bin", &data);
    let s3 = support::s3_server::S3Server::start(&ws.models());
    let entry = ws.entry("bucket/m", "m", &["s3://bucket/m".to_owned()], MIB);
    fs::write(
        ws.models().join("bucket/catalog.toml"),
        manifest_text(&[entry]),
    )
    .unwrap();
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let m = Mount::start_with_env(&ws, &["-m", "s3://bucket/catalog.toml"], &env);
    assert!(fs::read(m.path("m/w.bin")).unwrap() == data);
}
