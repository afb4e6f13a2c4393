"""The Python API against the installed wheel: a real modelfs command, an
HTTP server with Range support on 127.0.0.1 (the project's range_server,
named by $MODELFS_RANGE_SERVER), and real FUSE mounts (run as root)."""

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import modelfs


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def served(tmp_path):
    """A model `tiny@1` (a safetensors file and a config) served over HTTP,
    its manifest, and a cache dir of the test's own."""
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    tensors = {"w": np.arange(300_000, dtype=np.float32).reshape(600, 500)}
    save_file(tensors, model / "model.safetensors")
    (model / "config.json").write_text('{"hidden": 500}')
    server = subprocess.Popen(
        [os.environ["MODELFS_RANGE_SERVER"], str(tmp_path / "models")],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = server.stdout.readline().strip()
    entry = subprocess.run(
        [str(modelfs.executable()), "manifest", "build", str(model), "--id", "tiny@1", "--source", f"{url}/tiny"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    manifest = tmp_path / "models.toml"
    manifest.write_text(f"version = 1\n\n{entry}")
    yield {"dir": model, "manifest": manifest, "cache": tmp_path / "cache", "tensors": tensors, "tmp": tmp_path}
    server.kill()
    server.wait()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_command_is_on_path():
    out = subprocess.run(["modelfs", "--help"], check=True, capture_output=True, text=True).stdout
    assert "mount" in out and "prefetch" in out


def test_prefetch_returns_the_ready_path(served):
    path = modelfs.prefetch("tiny@1", manifest=served["manifest"], cache_dir=served["cache"])
    assert path == served["cache"] / "models" / "tiny@1"
    for name in ("model.safetensors", "config.json"):
        assert sha256(path / name) == sha256(served["dir"] / name)
    # Complete: again costs nothing, and status says so.
    assert modelfs.prefetch("tiny@1", manifest=served["manifest"], cache_dir=served["cache"]) == path
    doc = modelfs.status(manifest=served["manifest"], cache_dir=served["cache"])
    assert [m["state"] for m in doc["models"]] == ["complete"]
    assert modelfs.verify(manifest=served["manifest"], cache_dir=served["cache"])[0]["ok"]


def test_a_mount_loads_and_is_gone_after_the_block(served):
    mnt = served["tmp"] / "mnt"
    mnt.mkdir()
    with modelfs.mount(mnt, manifest=served["manifest"], cache_dir=served["cache"]) as root:
        assert root == mnt and mounted(mnt)
        loaded = load_file(root / "tiny@1" / "model.safetensors")
        assert np.array_equal(loaded["w"], served["tensors"]["w"])
        del loaded
    assert not mounted(mnt)


def test_a_mount_is_gone_when_the_block_raises(served):
    mnt = served["tmp"] / "mnt"
    mnt.mkdir()
    with pytest.raises(RuntimeError, match="inside"):
        with modelfs.mount(mnt, manifest=served["manifest"], cache_dir=served["cache"]):
            # A file left open: the mount is detached all the same.
            held = open(mnt / "tiny@1" / "config.json", "rb")
            raise RuntimeError("inside")
    assert not mounted(mnt)
    held.close()


def test_a_wrong_sha256_names_the_model_and_the_file(served):
    text = served["manifest"].read_text()
    good = sha256(served["dir"] / "config.json")
    served["manifest"].write_text(text.replace(good, hashlib.sha256(b"other").hexdigest()))
    with pytest.raises(modelfs.FetchError) as caught:
        modelfs.prefetch("tiny@1", manifest=served["manifest"], cache_dir=served["cache"])
    assert caught.value.model == "tiny@1"
    assert "config.json" in str(caught.value)


def test_a_bad_manifest_names_the_line_and_the_field(served):
    text = served["manifest"].read_text()
    served["manifest"].write_text(text.replace("size = ", "size = -", 1))
    with pytest.raises(modelfs.ManifestError) as caught:
        modelfs.status(manifest=served["manifest"], cache_dir=served["cache"])
    error = caught.value
    assert error.file == str(served["manifest"])
    assert error.line > 0 and error.field.endswith(".size"), error
    assert isinstance(error, modelfs.ModelfsError)
    with pytest.raises(modelfs.ManifestError):
        with modelfs.mount(served["tmp"], manifest=served["manifest"]):
            pass


def test_a_path_like_manifest_and_the_environment_default(served, monkeypatch):
    monkeypatch.setenv("MODELFS_MANIFEST", str(served["manifest"]))
    monkeypatch.setenv("MODELFS_CACHE_DIR", str(served["cache"]))
    assert modelfs.prefetch("tiny@1").is_dir()


def test_a_bad_option_says_which(served):
    mnt = served["tmp"] / "mnt"
    mnt.mkdir()
    with pytest.raises(modelfs.MountError, match="--layuot"):
        with modelfs.mount(mnt, manifest=served["manifest"], layuot="hf"):
            pass
    assert not mounted(mnt)


def test_a_symlinked_mountpoint_is_unmounted(served):
    real = served["tmp"] / "real-mnt"
    real.mkdir()
    link = served["tmp"] / "link"
    link.symlink_to(real)
    with modelfs.mount(link, manifest=served["manifest"], cache_dir=served["cache"]) as root:
        assert root == real and mounted(real)
    assert not mounted(real)


def test_signatures_are_required_when_asked(served):
    # The publisher key of the Rust tests' signed fixture; `tiny@1` names no bundle.
    key = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "signed" / "pub.pem"
    with pytest.raises(modelfs.FetchError) as refused:
        modelfs.prefetch(
            "tiny@1", manifest=served["manifest"], cache_dir=served["cache"], trusted_key=[key], require_signatures=True
        )
    assert refused.value.model == "tiny@1"
    assert "--require-signatures" in str(refused.value)
    path = modelfs.prefetch("tiny@1", manifest=served["manifest"], cache_dir=served["cache"], trusted_key=key)
    assert sha256(path / "config.json") == sha256(served["dir"] / "config.json")
    tiny = next(m for m in modelfs.status(manifest=served["manifest"], cache_dir=served["cache"])["models"])
    assert tiny["signature"] == "unsigned"
