//! Real loaders on a mounted file: Python `safetensors` opens it through the
//! kernel (it mmaps the file) and must see exactly the tensors written.

mod support;

use std::process::Command;

use support::*;

const WRITE: &str = r#"
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(7)
save_file({
    "embed.weight": rng.standard_normal((1024, 768)).astype(np.float32),
    "layers.0.bias": np.arange(4096, dtype=np.float16),
    "lm_head.weight": rng.standard_normal((768, 512)).astype(np.float32),
}, sys.argv[1], metadata={"format": "np"})
"#;

/// Prints each tensor's name, shape, dtype and checksum, sorted by name.
const SUMMARY: &str = r#"
import sys, hashlib
from safetensors import safe_open
with safe_open(sys.argv[1], framework="np") as f:
    for name in sorted(f.keys()):
        t = f.get_tensor(name)
        print(name, t.shape, t.dtype, hashlib.sha256(t.tobytes()).hexdigest())
"#;

/// Model `tiny@fp32`: a safetensors file at `rel` under it, written by
/// Python, served in 64 KiB chunks. Returns the tensors' summary.
fn tiny_model(ws: &Workspace, rel: &str) -> (RangeServer, String) {
    let original = ws.models().join("m").join(rel);
    std::fs::create_dir_all(original.parent().unwrap()).unwrap();
    python(WRITE, &[&original]);
    let expected = python(SUMMARY, &[&original]);
    assert_eq!(expected.lines().count(), 3);
    let server = RangeServer::start(&ws.models());
    // 64 KiB chunks: the tensors span many, read out of order by mmap faults.
    ws.write_manifest(&[ws.entry("m", "tiny@fp32", &[format!("{}/m", server.url())], 1 << 16)]);
    (server, expected)
}

#[test]
fn safetensors_safe_open_reads_the_right_tensors() {
    let ws = Workspace::new();
    let (server, expected) = tiny_model(&ws, "model.safetensors");
    let m = ws.mount();
    let mounted = m.path("tiny@fp32/model.safetensors");
    assert_eq!(python(SUMMARY, &[&mounted]), expected);
    assert!(server.bytes_sent() > 0);
}

#[test]
fn safetensors_loads_from_a_prefetched_tree_without_a_mount() {
    let ws = Workspace::new();
    let (_server, expected) = tiny_model(&ws, "sub/model.safetensors");
    let out = ws.run_ok(&["prefetch".as_ref(), "tiny@fp32".as_ref()]);
    let tree = std::path::PathBuf::from(out.trim());
    assert_eq!(
        python(SUMMARY, &[&tree.join("sub/model.safetensors")]),
        expected
    );
}

/// A tiny BERT repo the test writes itself: config, tokenizer files, weights.
const TINY_BERT: &[(&str, &str)] = &[
    (
        "config.json",
        r#"{"model_type": "bert", "vocab_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64}"#,
    ),
    (
        "tokenizer_config.json",
        r#"{"tokenizer_class": "BertTokenizer", "do_lower_case": true}"#,
    ),
    (
        "vocab.txt",
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n!\n",
    ),
];

/// Through `--layout hf`, with HF_HUB_CACHE at the mount and offline:
/// `snapshot_download`, `hf_hub_download`, transformers' `AutoConfig` and
/// `AutoTokenizer`, and safetensors on the snapshot's weights.
const THROUGH_HUB: &str = r#"
import os, sys, hashlib
from huggingface_hub import snapshot_download, hf_hub_download
snapshot = snapshot_download("acme/tiny-bert")
print("snapshot", os.path.relpath(snapshot, os.environ["HF_HUB_CACHE"]))
print("config", open(hf_hub_download("acme/tiny-bert", "config.json")).read().count("bert"))
from transformers import AutoConfig, AutoTokenizer
config = AutoConfig.from_pretrained("acme/tiny-bert", local_files_only=True)
print("model_type", config.model_type, config.hidden_size)
tokenizer = AutoTokenizer.from_pretrained("acme/tiny-bert", local_files_only=True)
print("tokens", tokenizer.tokenize("Hello world!"))
from safetensors import safe_open
with safe_open(os.path.join(snapshot, "model.safetensors"), framework="np") as f:
    for name in sorted(f.keys()):
        t = f.get_tensor(name)
        print(name, t.shape, t.dtype, hashlib.sha256(t.tobytes()).hexdigest())
"#;

#[test]
fn huggingface_hub_and_transformers_read_through_the_hf_layout() {
    let ws = Workspace::new();
    for (name, text) in TINY_BERT {
        ws.add_file("bert", name, text.as_bytes());
    }
    let weights = ws.models().join("bert/model.safetensors");
    python(WRITE, &[&weights]);
    let tensors = python(SUMMARY, &[&weights]);
    let server = RangeServer::start(&ws.models());
    let entry = ws.entry(
        "bert",
        "tiny-bert@1",
        &[format!("{}/bert", server.url())],
        1 << 16,
    );
    // The repo the hub cache shows it as.
    let entry = entry.replacen('\n', "\nrepo = \"acme/tiny-bert\"\n", 1);
    ws.write_manifest(&[entry]);
    let m = Mount::start(&ws, &["--layout", "hf"]);

    let out = Command::new("python3")
        .args(["-c", THROUGH_HUB])
        .env("HF_HUB_CACHE", &m.mountpoint)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", ws.path("hf-home"))
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("python3 with huggingface_hub and transformers (.ci/run installs them)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("snapshot models--acme--tiny-bert/snapshots/"),
        "{said}"
    );
    assert!(said.contains("config 1"), "{said}");
    assert!(said.contains("model_type bert 32"), "{said}");
    assert!(said.contains("tokens ['hello', 'world', '!']"), "{said}");
    assert!(said.ends_with(&tensors), "{said}\nwant tensors:\n{tensors}");
    assert!(server.bytes_sent() > 0, "read through the mount, lazily");
}
