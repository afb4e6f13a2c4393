//! One test per class of manifest error, each checking the line and field
//! reported, plus a valid manifest and a `manifest build` round trip.

use std::path::Path;

use super::super::{Manifest, ManifestError};

/// The sha256 of "hello\n": any non-empty file's will do.
const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
/// The empty file's.
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(Path::new("models.toml"), text)
}

/// Asserts the error's line, field, and a fragment of its message.
#[track_caller]
fn fails(text: &str, line: usize, field: &str, fragment: &str) {
    let e = parse(text).expect_err("manifest should be rejected");
    assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
    assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
    assert!(
        e.to_string().starts_with(&format!("models.toml:{line}:")),
        "{e}"
    );
}

/// A valid model with one file; `extra` lines go into the file table.
fn one_file(extra: &str) -> String {
    format!(
        "version = 1\n\
         [[model]]\n\
         id = \"tiny-llama@fp16\"\n\
         sources = [\"http://127.0.0.1:1/m\"]\n\
         [[model.file]]\n\
         path = \"model.safetensors\"\n\
         size = 200000\n\
         sha256 = \"{SHA}\"\n\
         {extra}"
    )
}

#[test]
fn accepts_a_full_manifest() {
    let text = format!(
        r#"version = 1

[[model]]
id = "t2v-A14B@2.2.0"
description = "video"
pinned = true
sources = ["http://127.0.0.1:8080/t2v", "s3://models/t2v", "hf://Wan-AI/Wan2.2@main", "file:///srv/t2v"]

[[model.file]]
path = "sub/dir/weights.bin"
size = 131073
sha256 = "{SHA}"
chunk_size = 65536
chunks = ["{SHA}", "{SHA}", "{SHA}"]
sources = ["https://mirror.example/weights.bin"]

[[model]]
id = "other"
[[model.file]]
path = "config.json"
size = 0
sha256 = "{}"
sources = ["file:///srv/other/config.json"]
"#,
        EMPTY.to_uppercase()
    );
    let m = parse(&text).unwrap();
    assert_eq!(m.models.len(), 2);
    let f = &m.models[0].files[0];
    assert_eq!((f.chunk_size, f.chunk_count()), (65536, 3));
    let locations = m.models[0].locations(f);
    assert_eq!(
        locations.len(),
        5,
        "own source first, then the model's four"
    );
    assert_eq!(
        locations[0].to_string(),
        "https://mirror.example/weights.bin"
    );
    assert_eq!(
        locations[1].to_string(),
        "http://127.0.0.1:8080/t2v/sub/dir/weights.bin"
    );
    assert!(m.models[0].pinned);
    assert_eq!(m.models[1].files[0].sha256.to_hex(), EMPTY);
}

#[test]
fn toml_syntax() {
    fails("version = 1\n[[model]\nid = \"x\"\n", 2, "", "");
}

#[test]
fn missing_version() {
    fails("[[model]]\nid = \"x\"\n", 1, "version", "missing field");
}

#[test]
fn unsupported_version() {
    fails(
        "version = 2\n",
        1,
        "version",
        "unsupported manifest version 2",
    );
}

#[test]
fn unknown_fields() {
    fails("version = 1\ncolour = 3\n", 2, "colour", "unknown field");
    fails(
        "version = 1\n[[model]]\nid = \"x\"\nsource = [\"file:///a\"]\n",
        4,
        "model[0].source",
        "unknown field",
    );
    fails(
        &one_file("checksum = \"abc\"\n"),
        9,
        "model[0].file[0].checksum",
        "unknown field",
    );
}

#[test]
fn missing_required_fields() {
    fails(
        "version = 1\n[[model]]\nsources = [\"file:///a\"]\n",
        2,
        "model[0].id",
        "missing field",
    );
    let no_sha = "version = 1\n[[model]]\nid = \"x\"\nsources = [\"file:///a\"]\n\
                  [[model.file]]\npath = \"a\"\nsize = 1\n";
    fails(no_sha, 5, "model[0].file[0].sha256", "missing field");
}

#[test]
fn wrong_types_and_negative_sizes() {
    fails(
        &one_file("").replace("size = 200000", "size = \"big\""),
        7,
        "model[0].file[0].size",
        "",
    );
    fails(
        &one_file("").replace("size = 200000", "size = -1"),
        7,
        "model[0].file[0].size",
        "",
    );
}

#[test]
fn bad_model_ids() {
    let with_id = |id: &str| one_file("").replace("tiny-llama@fp16", id);
    fails(&with_id("has space"), 3, "model[0].id", "not allowed");
    fails(
        &with_id(".."),
        3,
        "model[0].id",
        "not a usable directory name",
    );
    fails(&with_id(""), 3, "model[0].id", "1 to 128");
    fails(&with_id(&"a".repeat(129)), 3, "model[0].id", "1 to 128");
}

#[test]
fn duplicate_model_ids() {
    let text = format!("{}[[model]]\nid = \"tiny-llama@fp16\"\n", one_file(""));
    fails(&text, 10, "model[1].id", "duplicate model id");
}

#[test]
fn bad_paths() {
    let with_path = |p: &str| one_file("").replace("model.safetensors", p);
    fails(
        &with_path("/etc/passwd"),
        6,
        "model[0].file[0].path",
        "relative",
    );
    fails(&with_path("a/../b"), 6, "model[0].file[0].path", "\"..\"");
    fails(&with_path("a//b"), 6, "model[0].file[0].path", "empty part");
    fails(&with_path("a/"), 6, "model[0].file[0].path", "empty part");
    // TOML escapes: a terminal escape, and a right-to-left override.
    fails(
        &with_path("a\\u001b[2Jb"),
        6,
        "model[0].file[0].path",
        "U+001B",
    );
    fails(
        &with_path("evil\\u202Etxt.exe"),
        6,
        "model[0].file[0].path",
        "U+202E",
    );
}

#[test]
fn duplicate_paths() {
    let text = format!(
        "{}[[model.file]]\npath = \"model.safetensors\"\nsize = 1\nsha256 = \"{SHA}\"\n",
        one_file("")
    );
    fails(&text, 10, "model[0].file[1].path", "duplicate path");
}

#[test]
fn path_that_is_also_a_directory() {
    let text = format!(
        "{}[[model.file]]\npath = \"model.safetensors/inner\"\nsize = 1\nsha256 = \"{SHA}\"\n",
        one_file("")
    );
    fails(&text, 6, "model[0].file[0].path", "also a directory");
}

#[test]
fn bad_hex() {
    fails(
        &one_file("").replace(SHA, &SHA[1..]),
        8,
        "model[0].file[0].sha256",
        "64 hex digits",
    );
    fails(
        &one_file("").replace(SHA, &"z".repeat(64)),
        8,
        "model[0].file[0].sha256",
        "not hexadecimal",
    );
    let chunks = format!("chunk_size = 131072\nchunks = [\"{SHA}\", \"xyz\"]\n");
    fails(
        &one_file(&chunks),
        10,
        "model[0].file[0].chunks[1]",
        "64 hex digits",
    );
}

#[test]
fn bad_chunk_sizes() {
    for bad in ["100000", "32768", "134217728"] {
        let text = one_file(&format!("chunk_size = {bad}\n"));
        fails(&text, 9, "model[0].file[0].chunk_size", "power of two");
    }
}

#[test]
fn wrong_chunk_count() {
    // 200000 bytes in 65536-byte chunks is 4 chunks, not 2.
    let text = one_file(&format!(
        "chunk_size = 65536\nchunks = [\"{SHA}\", \"{SHA}\"]\n"
    ));
    fails(&text, 10, "model[0].file[0].chunks", "has 4");
}

#[test]
fn unknown_scheme_and_bad_urls() {
    let with_source = |s: &str| one_file("").replace("http://127.0.0.1:1/m", s);
    fails(
        &with_source("ftp://host/m"),
        4,
        "model[0].sources[0]",
        "unknown scheme",
    );
    fails(
        &with_source("file://relative/dir"),
        4,
        "model[0].sources[0]",
        "absolute",
    );
    fails(&with_source("http://"), 4, "model[0].sources[0]", "");
    fails(
        &one_file("sources = [\"gopher://x\"]\n"),
        9,
        "model[0].file[0].sources[0]",
        "unknown scheme",
    );
}

#[test]
fn files_need_a_source() {
    let text = one_file("").replace("sources = [\"http://127.0.0.1:1/m\"]\n", "");
    fails(&text, 5, "model[0].file[0].sources", "no sources");
}

#[test]
fn build_output_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("sub/w.bin"), &big).unwrap();
    std::fs::write(dir.path().join("config \"q\".json"), b"{}").unwrap();
    let opts = crate::manifest::BuildOptions {
        id: "m@1".into(),
        sources: vec!["http://127.0.0.1:9/m".into()],
        chunk_size: Some(65536),
        description: Some("a \"quoted\" description".into()),
    };
    let entry = crate::manifest::build_entry(dir.path(), &opts).unwrap();
    let m = parse(&format!("version = 1\n{entry}")).unwrap();
    let files = &m.models[0].files;
    assert_eq!(&*files[0].path, "config \"q\".json");
    let w = &files[1];
    assert_eq!((&*w.path, w.size), ("sub/w.bin", 300_000));
    assert_eq!(w.sha256, crate::hash::Digest::of(&big));
    let chunks: Vec<_> = w.chunk_hashes().unwrap().collect();
    assert_eq!(chunks.len(), 5);
    assert_eq!(chunks[4], crate::hash::Digest::of(&big[4 * 65536..]));
    // A file of one chunk holds no second copy of its sha256, and says the same.
    let one = &files[0];
    assert_eq!(
        one.chunk_hashes().unwrap().collect::<Vec<_>>(),
        [one.sha256]
    );
    assert_eq!(
        (one.chunk_hash(0), one.chunk_hash(1)),
        (Some(one.sha256), None)
    );
}

#[test]
fn an_empty_file_must_have_the_empty_digest() {
    let text = one_file("")
        .replace("size = 200000", "size = 0")
        .replace(SHA, EMPTY);
    assert!(parse(&text).is_ok());
    let wrong = text.replace(EMPTY, &"ab".repeat(32));
    fails(&wrong, 8, "model[0].file[0].sha256", "the file is empty");
}

/// The seed's manifest had these: each makes every read of its file fail.
#[test]
fn placeholder_digests_are_refused() {
    fails(
        &one_file("").replace(SHA, EMPTY),
        8,
        "model[0].file[0].sha256",
        "the empty file's sha256, but size = 200000",
    );
    fails(
        &one_file("").replace(SHA, &"0".repeat(64)),
        8,
        "model[0].file[0].sha256",
        "all zeros",
    );
}

#[test]
fn one_sha256_with_two_sizes_is_refused() {
    let second = "[[model]]\nid = \"b\"\nsources = [\"file:///srv\"]\n\
                  [[model.file]]\npath = \"w.bin\"\nsize = 7\nsha256 = \"SHA\"\n";
    let text = format!("{}{}", one_file(""), second.replace("SHA", SHA));
    let line = one_file("").lines().count() + 7;
    fails(
        &text,
        line,
        "model[1].file[0].sha256",
        "size = 200000, here 7",
    );
    // Read in parts (over a megabyte), it is found all the same.
    let big = format!(
        "{}{}",
        catalog("", 8000),
        text.replacen("version = 1\n", "", 1)
    );
    let e = parse(&big).unwrap_err();
    assert!(e.message.contains("given before with size"), "{e}");
}

/// A manifest of `n` models of one file, with `head` after its version.
fn catalog(head: &str, n: usize) -> String {
    let mut text = format!("version = 1\n{head}");
    for i in 0..n {
        text += &format!(
            "\n[[model]]\nid = \"m{i}\"\nsources = [\"file:///srv\"]\n\
             [[model.file]]\npath = \"w.bin\"\nsize = 0\nsha256 = \"{EMPTY}\"\n"
        );
    }
    text
}

#[test]
fn a_large_manifest_is_read_in_parts_as_it_would_be_whole() {
    // Over a megabyte: parsed in parts.
    let text = catalog("", 8000);
    assert!(text.len() > 1 << 20);
    let m = parse(&text).unwrap();
    assert_eq!(m.models.len(), 8000);
    assert_eq!(
        (m.models[7999].id.as_str(), m.models[7999].files.len()),
        ("m7999", 1)
    );
    // What the whole text gets wrong, the parts must not accept.
    fails(
        &catalog("model = []\n", 8000),
        4,
        "model[0]",
        "duplicate key",
    );
    let dup = catalog("", 8000).replace("id = \"m7000\"", "id = \"m10\"");
    fails(&dup, 8 * 7000 + 4, "model[7000].id", "duplicate model id");
    let bad = text.replace(
        &format!("sha256 = \"{EMPTY}\"\n\n[[model]]\nid = \"m5000\""),
        &format!("sha256 = \"{}\"\n\n[[model]]\nid = \"m5000\"", &EMPTY[1..]),
    );
    fails(
        &bad,
        8 * 4999 + 9,
        "model[4999].file[0].sha256",
        "64 hex digits",
    );
}

#[test]
fn a_reload_shares_the_models_whose_text_is_the_same() {
    let text = catalog("", 8000);
    let before = parse(&text).unwrap();
    // m10 changes, m8000 comes, m20 goes.
    let now = text
        .replace(
            "id = \"m10\"\nsources = [\"file:///srv\"]",
            "id = \"m10\"\nsources = [\"file:///other\"]",
        )
        .replace(
            "\n[[model]]\nid = \"m20\"\n",
            "\n[[model]]\nid = \"m8000\"\n",
        );
    let after = Manifest::parse_after(Path::new("models.toml"), &now, None, Some(&before)).unwrap();
    assert_eq!(after.models.len(), 8000);
    let shared = |i: usize| std::sync::Arc::ptr_eq(&before.models[i], &after.models[i]);
    assert!(shared(0) && shared(11) && shared(7999));
    assert!(!shared(10) && !shared(20));
    assert_eq!(after.models[10].sources[0].to_string(), "file:///other");
    assert_eq!(after.models[20].id, "m8000");
    // As it would be read alone.
    let alone = parse(&now).unwrap();
    assert_eq!(format!("{:?}", alone.models), format!("{:?}", after.models));
    // A reload's text is checked whole all the same.
    let dup = now.replace("id = \"m30\"", "id = \"m31\"");
    let e = Manifest::parse_after(Path::new("models.toml"), &dup, None, Some(&after)).unwrap_err();
    assert!(e.message.contains("duplicate model id"), "{e}");
}

#[test]
fn local_sources_belong_to_the_orchestrators_format() {
    let model = one_file("").replace("http://127.0.0.1:1/m", "local://m");
    fails(&model, 4, "model[0].sources", "orchestrator");
    fails(
        &one_file("sources = [\"local://w\"]\n"),
        9,
        "model[0].file[0].sources",
        "orchestrator",
    );
}
