//! Mounting from /etc/fstab: `mount -t fuse.modelfs MANIFEST MOUNTPOINT -o
//! OPTIONS` runs the `mount.fuse` helper, which runs `modelfs MANIFEST
//! MOUNTPOINT -o OPTIONS` and waits for it. That call is translated into
//! `modelfs mount MOUNTPOINT -m MANIFEST --daemon ...`, so it returns once
//! the mount is ready. An fstab line:
//!
//! ```text
//! /etc/modelfs/models.toml  /models  fuse.modelfs  cache_dir=/var/cache/modelfs,max_cache_size=500G,allow_other  0 0
//! ```

use std::ffi::OsString;
use std::path::Path;

use super::UsageError;

/// Options the kernel or mount(8) handle themselves, or that a read-only
/// tree satisfies anyway.
const GENERIC: &[&str] = &[
    "defaults", "rw", "ro", "auto", "noauto", "user", "nouser", "users", "dev", "nodev", "suid",
    "nosuid", "exec", "noexec", "async", "sync", "atime", "noatime", "relatime", "_netdev",
    "nofail",
];

/// Options that become flags of `modelfs mount`, with their values.
const VALUED: &[(&str, &str)] = &[
    ("cache_dir", "--cache-dir"),
    ("max_cache_size", "--max-cache-size"),
    ("layout", "--layout"),
    ("local_root", "--local-root"),
    ("metrics_addr", "--metrics-addr"),
    ("log_file", "--log-file"),
];

/// `args` (the process's, program name first) as the mount helper calls
/// modelfs, translated into a `modelfs mount` command line; `None` when
/// this is not such a call.
pub fn translate(args: &[OsString]) -> Option<Result<Vec<OsString>, UsageError>> {
    let [program, source, mountpoint, rest @ ..] = args else {
        return None;
    };
    // A subcommand or a flag comes first in every other call; the helper
    // passes a manifest file and an existing directory.
    if !Path::new(source).is_file() || !Path::new(mountpoint).is_dir() {
        return None;
    }
    let mut out: Vec<OsString> = vec![
        program.clone(),
        "mount".into(),
        mountpoint.clone(),
        "-m".into(),
        source.clone(),
        "--daemon".into(),
    ];
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        if arg != "-o" {
            return Some(Err(UsageError(format!(
                "unexpected {arg:?} after the manifest and the mountpoint (use -o OPTIONS)"
            ))));
        }
        let Some(options) = rest.next().and_then(|o| o.to_str()) else {
            return Some(Err(UsageError("-o needs a list of options".into())));
        };
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            if GENERIC.contains(&key) || key.starts_with("x-") {
                continue;
            }
            if key == "allow_other" {
                out.push("--allow-other".into());
            } else if let Some((_, flag)) = VALUED.iter().find(|(k, _)| *k == key) {
                out.push((*flag).into());
                out.push(value.into());
            } else {
                let known: Vec<&str> = VALUED.iter().map(|(k, _)| *k).collect();
                return Some(Err(UsageError(format!(
                    "unknown mount option {key:?} (modelfs takes {}, allow_other)",
                    known.join(", ")
                ))));
            }
        }
    }
    Some(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_call_becomes_a_daemon_mount() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("models.toml");
        std::fs::write(&manifest, "version = 1\n").unwrap();
        let args = |rest: &[&str]| -> Vec<OsString> {
            let mut a: Vec<OsString> =
                vec!["modelfs".into(), manifest.clone().into(), dir.path().into()];
            a.extend(rest.iter().map(OsString::from));
            a
        };
        let got = translate(&args(&[
            "-o",
            "rw,nodev,cache_dir=/c,max_cache_size=5G,allow_other,x-systemd.automount",
        ]))
        .unwrap()
        .unwrap();
        let want: Vec<OsString> = [
            "modelfs",
            "mount",
            dir.path().to_str().unwrap(),
            "-m",
            manifest.to_str().unwrap(),
            "--daemon",
            "--cache-dir",
            "/c",
            "--max-cache-size",
            "5G",
            "--allow-other",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(got, want);
        let err = translate(&args(&["-o", "colour=red"]))
            .unwrap()
            .unwrap_err();
        assert!(err.0.contains("colour"), "{err}");
        // Every other command line is left to clap.
        assert!(translate(&["modelfs".into(), "ls".into(), "x".into()]).is_none());
        assert!(translate(&["modelfs".into(), "--version".into()]).is_none());
    }
}
