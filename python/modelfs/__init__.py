"""modelfs from Python: ML models mounted lazily from a manifest, fetched by
the chunk, verified before a byte is served, and cached.

Each function runs the ``modelfs`` command this package installed, as the
CLI would, and raises :class:`ModelfsError` (or a subclass callers branch
on) when it fails. ``manifest`` and ``cache_dir`` default as the CLI's do:
``$MODELFS_MANIFEST`` and ``$MODELFS_CACHE_DIR``.

>>> import modelfs
>>> path = modelfs.prefetch("llama@1", manifest="models.toml")   # doctest: +SKIP
>>> with modelfs.mount("/models", manifest="models.toml") as root:  # doctest: +SKIP
...     weights = root / "llama@1" / "model.safetensors"
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

__all__ = [
    "FetchError",
    "ManifestError",
    "ModelfsError",
    "MountError",
    "executable",
    "mount",
    "prefetch",
    "status",
    "verify",
]

PathLike = Union[str, "os.PathLike[str]"]


class ModelfsError(Exception):
    """A modelfs command failed. ``message`` is what it said; ``exit_code``
    its exit status (1: a runtime failure, 2: a usage or manifest error)."""

    def __init__(self, message: str, *, exit_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ManifestError(ModelfsError):
    """The manifest cannot be used. ``file``, ``line``, ``column`` and
    ``field`` say where (``line`` 0 when the file could not be read)."""

    def __init__(self, message: str, *, file: str, line: int, column: int, field: str) -> None:
        super().__init__(message, exit_code=2)
        self.file, self.line, self.column, self.field = file, line, column, field


class FetchError(ModelfsError):
    """A model could not be fetched and verified; ``model`` names it and the
    message the file and the sources tried."""

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message, exit_code=1)
        self.model = model


class MountError(ModelfsError):
    """A mount could not be made, or could not be unmounted."""


def executable() -> Path:
    """The ``modelfs`` command: the one installed with this package, else the
    first on ``PATH``."""
    beside = Path(sysconfig.get_path("scripts")) / "modelfs"
    if beside.is_file():
        return beside
    found = shutil.which("modelfs")
    if found is None:
        raise ModelfsError("the modelfs command is not installed (pip install modelfs)")
    return Path(found)


# `modelfs: FILE:LINE:COLUMN: [FIELD: ]MESSAGE`, as manifest errors print.
_LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?:(?P<field>[^:\s]+): )?")


def _error(stderr: str, exit_code: int) -> ModelfsError:
    """The error a failed command printed: its `modelfs:` line, or the
    `error:` line of a usage error (whose other lines are hints)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith(("modelfs:", "error:"))),
        lines[-1] if lines else f"modelfs exited with {exit_code}",
    )
    located = _LOCATED.match(said)
    if exit_code == 2 and located:
        return ManifestError(
            said,
            file=located["file"],
            line=int(located["line"]),
            column=int(located["column"]),
            field=located["field"] or "",
        )
    return ModelfsError(said, exit_code=exit_code)


def _run(
    subcommand: str,
    args: Sequence[str],
    *,
    manifest: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    names: Sequence[str] = (),
    show_progress: bool = False,
) -> subprocess.CompletedProcess:
    """Runs `modelfs SUBCOMMAND ARGS [-m ..] [--cache-dir ..] -- NAMES`:
    names after `--`, so that none is taken for a flag."""
    command = [os.fspath(executable()), subcommand, *args]
    if manifest is not None:
        command += ["-m", os.fspath(manifest)]
    if cache_dir is not None:
        command += ["--cache-dir", os.fspath(cache_dir)]
    if names:
        command += ["--", *names]
    if show_progress:
        # Progress bars go to the caller's terminal; the error's line is
        # kept (it is the last) to raise.
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, check=False)
        done.stderr = ""
        return done
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)


def _json_lines(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prefetch(
    model_id: str,
    *,
    manifest: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    progress: bool = False,
    trusted_key: Union[PathLike, Sequence[PathLike], None] = None,
    require_signatures: bool = False,
) -> Path:
    """Fetches and verifies every file of ``model_id`` into the cache (nothing
    if it is complete), and returns the model's ready path
    ``CACHE/models/<id>``: its files, as links into the cache, for loaders
    that need no mount.

    Raises :class:`FetchError` naming the model, file and sources if a file
    cannot be had right, :class:`ManifestError` for a manifest that cannot
    be used. With ``progress``, the command's bars and any other error it
    prints go to the terminal. With ``trusted_key`` (one PEM public key or
    several), a model that names a signature bundle is fetched only if the
    bundle verifies and signs its files; a refusal raises
    :class:`FetchError` saying why (``require_signatures``: also for a
    model that names none)."""
    done = _run(
        "prefetch",
        ["--json", *_flags({"trusted_key": trusted_key, "require_signatures": require_signatures})],
        manifest=manifest,
        cache_dir=cache_dir,
        names=[model_id],
        show_progress=progress,
    )
    records = _json_lines(done.stdout) if done.stdout else []
    for record in records:
        if record.get("model") != model_id:
            continue
        if record.get("ok"):
            return Path(record["path"])
        raise FetchError(f"prefetch {model_id}: {record.get('error')}", model=model_id)
    raise _error(done.stderr or "", done.returncode)


def status(*, manifest: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """What the cache holds of each model of the manifest, and which mounts
    use it: the document of ``modelfs status --json``. No network."""
    done = _run("status", ["--json"], manifest=manifest, cache_dir=cache_dir)
    if done.returncode != 0:
        raise _error(done.stderr, done.returncode)
    return json.loads(done.stdout)


def verify(
    *models: str,
    manifest: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    trusted_key: Union[PathLike, Sequence[PathLike], None] = None,
    require_signatures: bool = False,
) -> List[Dict[str, Any]]:
    """Re-hashes what the cache holds of ``models`` (all by default),
    dropping what is bad; returns one record per model (``modelfs verify
    --json``). With ``trusted_key``, signed models' bundles are checked too.
    Raises :class:`ModelfsError` if anything was bad, with the records as
    ``records``."""
    signatures = _flags({"trusted_key": trusted_key, "require_signatures": require_signatures})
    done = _run("verify", ["--json", *signatures], manifest=manifest, cache_dir=cache_dir, names=models)
    records = _json_lines(done.stdout) if done.returncode in (0, 1) else []
    bad = [str(r.get("model")) for r in records if not r.get("ok", True)]
    if done.returncode != 0 and not bad:
        raise _error(done.stderr, done.returncode)
    if bad:
        error = ModelfsError(f"verify found bad bytes in {', '.join(bad)}", exit_code=done.returncode)
        error.records = records  # type: ignore[attr-defined]
        raise error
    return records


def _flags(options: Dict[str, Any]) -> List[str]:
    """``key=value`` as ``--key value``; True as the bare flag; a list or
    tuple as the flag repeated (``trusted_key=["a.pem", "b.pem"]``)."""
    flags: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        for one in value if isinstance(value, (list, tuple)) else [value]:
            if one is True:
                flags.append(flag)
            elif one is not None and one is not False:
                flags += [flag, os.fspath(one) if isinstance(one, os.PathLike) else str(one)]
    return flags


@contextlib.contextmanager
def mount(
    mountpoint: PathLike,
    *,
    manifest: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    **options: Any,
) -> Iterator[Path]:
    """Mounts the manifest's models at ``mountpoint`` (an existing empty
    directory) for the ``with`` block, and yields it as a :class:`Path`; the
    mount is gone after the block, also when it raises (detached, if files
    are still open under it). ``options`` are ``modelfs mount`` flags:
    ``layout="hf"``, ``max_cache_size="20G"``, ``allow_other=True``,
    ``metrics_addr="127.0.0.1:9100"``, ``trusted_key=["a.pem", "b.pem"]``...

    Raises :class:`MountError` if it cannot mount, :class:`ManifestError`
    for a manifest that cannot be used."""
    # Resolved as the kernel records it, so that the unmount finds it.
    root = Path(os.fspath(mountpoint)).resolve()
    done = _run(
        "mount",
        [os.fspath(root), "--daemon", *_flags(options)],
        manifest=manifest,
        cache_dir=cache_dir,
    )
    if done.returncode != 0:
        error = _error(done.stderr, done.returncode)
        if isinstance(error, ManifestError):
            raise error
        raise MountError(error.message, exit_code=done.returncode)
    try:
        yield root
    finally:
        gone = _run("umount", [os.fspath(root), "--lazy"])
        if gone.returncode != 0:
            raise MountError(_error(gone.stderr, gone.returncode).message, exit_code=gone.returncode)
