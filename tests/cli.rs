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
