//! The command line as an operator meets it: version, completions, man page.

mod support;

use support::*;

#[test]
fn version_completions_and_man_page() {
    let ws = Workspace::new();
    let version = ws.run_ok(&["--version".as_ref()]);
    assert_eq!(
        version.trim(),
        format!("modelfs {}", env!("CARGO_PKG_VERSION"))
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = ws.run_ok(&["completions".as_ref(), shell.as_ref()]);
        assert!(
            script.contains("prefetch") && script.contains("layout"),
            "{shell}"
        );
    }
    let man = ws.run_ok(&["man".as_ref()]);
    assert!(
        man.starts_with(".ie") && man.contains(".TH modelfs 1"),
        "{man}"
    );
    assert!(man.contains("manifest"), "the subcommands are listed");
}

/// Each line of `out`, parsed as JSON.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn ls_prefetch_verify_and_gc_speak_json_one_object_per_line() {
    let ws = Workspace::new();
    let data = sample_bytes(300_000, 67);
    ws.add_file("m", "w.bin", &data);
    let server = RangeServer::start(&ws.models());
    ws.write_manifest(&[ws.entry("m", "m@1", &[format!("{}/m", server.url())], 1 << 16)]);
    let run =
        |args: &[&str]| json_lines(&ws.run_ok(&args.iter().map(AsRef::as_ref).collect::<Vec<_>>()));

    let prefetched = run(&["prefetch", "--json", "m@1"]);
    assert_eq!(prefetched.len(), 1);
    assert_eq!(prefetched[0]["model"], "m@1");
    assert_eq!(prefetched[0]["ok"], true);
    assert!(
        prefetched[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("models/m@1")
    );

    let models = run(&["ls", "--json"]);
    assert_eq!(models[0]["id"], "m@1");
    assert_eq!(models[0]["cached_bytes"], data.len() as u64);
    let files = run(&["ls", "--json", "m@1"]);
    assert_eq!(files[0]["path"], "w.bin");
    assert_eq!(files[0]["sha256"], sha256_hex(&data));
    assert_eq!(files[0]["verified"], "chunks");

    let verified = run(&["verify", "--json"]);
    assert_eq!(verified[0]["ok"], true);
    assert_eq!(verified[0]["checked_bytes"], data.len() as u64);

    let gc = run(&["gc", "--json", "--dry-run", "--max-cache-size", "1"]);
    assert_eq!(gc[0]["sha256"], sha256_hex(&data));
    assert_eq!(gc[0]["evicted"], false, "a dry run evicts nothing");
    assert_eq!(gc.last().unwrap()["dry_run"], true);
}

/// `modelfs ls | head`: a reader that stops early ends the listing as it
/// ends `ls`'s own (SIGPIPE), never with a panic and a backtrace.
#[test]
fn listings_end_quietly_when_their_reader_stops() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let ws = Workspace::new();
    // Far more than a pipe holds, so that the writer meets the closed pipe.
    let models: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "[[model]]\nid = \"model-{i:05}\"\nsources = [\"http://127.0.0.1:9/m\"]\n\
                 [[model.file]]\npath = \"w.bin\"\nsize = 0\nsha256 = \"{}\"\n",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )
        })
        .collect();
    ws.write_manifest(&models);
    for command in [&["ls"][..], &["ls", "--json"], &["status"]] {
        let mut child = ws
            .modelfs()
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 100];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The read end is closed now: the rest cannot be written.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{command:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{command:?}: {stderr}"
        );
    }
}
