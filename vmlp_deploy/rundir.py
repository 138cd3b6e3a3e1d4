"""Run directories: one output directory per run, written atomically, with a ``manifest.json`` that later
stages read and extend.

A run is built in a hidden sibling temp directory and renamed into place only when every stage succeeded,
so a failed export (or a failed validation gate) never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

MANIFEST = "manifest.json"


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing output directory unless asked to overwrite, and fail early on unwritable parents."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory: choose another -o")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output directory {out} already exists: pass --overwrite or choose another -o")
    parent = out.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise UserError(f"cannot write to {probe}: choose an output directory you can write to")


@contextmanager
def staged_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp directory next to ``out``; on success replace ``out`` with it, on failure delete it."""
    check_output_dir(out, overwrite)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
    except OSError as e:
        raise UserError(f"cannot create output directory {out}: {e.strerror}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        backup = parent / f".{out.name}.old-{os.getpid()}"
        out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(out)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} has no {MANIFEST}: pass a directory written by `vmlp-deploy export`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): re-run the export") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints and models can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM where Linux has it (``ru_maxrss`` keeps the pre-exec peak of
    a big parent that forked us, so a child of a 2 GB benchmark would report 2 GB), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
