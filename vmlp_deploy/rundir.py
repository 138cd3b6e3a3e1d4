"""Run directories: one output directory per run, written atomically, with a ``manifest.json`` that later
stages read and extend.

A run is built in a hidden sibling temp directory and renamed into place only when every stage succeeded,
so a failed export (or a failed validation gate) never leaves a half-written model behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .records import Artifacts, ManifestError, RunManifest

if TYPE_CHECKING:
    import onnx

MANIFEST = "manifest.json"
#: Errors writing a run that are the machine's, not a bug: a full disk or quota, a read-only file system.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def blocking_file(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a directory: a run cannot go under it."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing output directory unless asked to overwrite, and fail early on unwritable parents."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory: choose another -o")
    blocker = blocking_file(out.absolute())
    if blocker is not None:
        raise UserError(f"cannot create {out}: {blocker} is a file, not a directory: choose another -o")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise UserError(f"-o {out} is the current directory or holds it: choose a new folder for the run")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"output directory {out} already exists{_holds(out)}: pass --overwrite or choose "
                            "another -o")
        if not (out / MANIFEST).is_file():
            raise UserError(f"--overwrite replaces only a vmlp-deploy run directory (one with {MANIFEST}), and "
                            f"{out} holds other files: choose another -o")
    parent = out.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise UserError(f"cannot write to {probe}: choose an output directory you can write to")


def _holds(run_dir: Path) -> str:
    """`` (the s2mlpv2_small (tiny) export run)``: what an existing run directory holds, as `runs` lists it, so that
    a refusal to replace it says what would be lost (a tiny export sits where the full one goes by default)."""
    from .runs import read_run  # runs reads run directories through this module

    info = read_run(run_dir)
    return "" if info is None else f" (the {info.model} {info.stage} run)"


@contextmanager
def staged_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp directory next to ``out``; on success replace ``out`` with it, on failure delete it, and the
    parent folders it had to create (a failed first run in an empty folder leaves no empty ``out/``)."""
    check_output_dir(out, overwrite)
    parent = out.resolve().parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
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
    except OSError as e:
        _discard(tmp, created)
        if e.errno not in WRITE_ERRORS:
            raise
        failed = Path(str(e.filename)).resolve() if e.filename else None
        scratch = Path(tempfile.gettempdir())
        if (failed is not None and failed != parent and parent not in failed.parents) or (
                failed is None and shutil.disk_usage(scratch).free < shutil.disk_usage(parent).free // 16):
            e.filename = e.filename or scratch
            raise UserError(f"cannot write the scratch file {e.filename}: {os.strerror(e.errno)}: free space there "
                            "or point TMPDIR elsewhere (nothing was written)") from None
        raise UserError(f"cannot write {out}: {os.strerror(e.errno)}: free space or choose another -o "
                        "(nothing was written)") from None
    except BaseException:
        _discard(tmp, created)
        raise
    with _signals_held():
        if not overwrite and out.exists() and any(out.iterdir()):
            _discard(tmp, [])
            raise UserError(f"output directory {out} was written by another run meanwhile: pass --overwrite or "
                            "choose another -o (nothing was written)")
        try:
            if out.exists():
                backup = parent / f".{out.name}.old-{os.getpid()}"
                out.rename(backup)
                tmp.rename(out)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                tmp.rename(out)
        except OSError as e:  # another run made ``out`` between the check and the rename
            _discard(tmp, [])
            raise UserError(f"cannot put the run in place at {out} ({e.strerror}): another run wrote it meanwhile? "
                            "choose another -o (nothing was written)") from None


def _discard(tmp: Path, created: list[Path]) -> None:
    """Delete a failed run's staging directory and the parents made for it, innermost first, if still empty."""
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a finished run replaces the old one: an interrupt between the two renames
    would leave neither in place. A signal that arrived meanwhile is delivered right after."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (temp file + rename) so readers never see a partial file; the temp file is this
    process's own (two runs filling one cache never share it) and is removed when the write fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_manifest(run_dir: Path, manifest: RunManifest) -> None:
    """The one manifest writer: ``run_dir/manifest.json``, atomically (see :func:`write_text`)."""
    write_json(run_dir / MANIFEST, manifest.to_json())


def load_manifest(run_dir: Path) -> RunManifest:
    """The manifest of ``run_dir``, checked once here so every stage can read its attributes without a
    KeyError/TypeError turning into an internal error; a broken one is one clear line."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} has no {MANIFEST}: pass a directory written by `vmlp-deploy export`")
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}: fix its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise UserError(f"{path} is not valid JSON ({why}): re-run the export") from None
    try:
        manifest = RunManifest.from_json(data)
    except ManifestError as e:
        raise UserError(_not_a_manifest(path, str(e))) from None
    for role in Artifacts.MODEL_FILES:
        value = getattr(manifest.artifacts, role) if manifest.artifacts else None
        if value is not None and (not isinstance(value, str) or Path(value).name != value):
            raise UserError(_not_a_manifest(path, f"artifacts.{role} is {value!r}, not a file name"))
    return manifest


def load_model_manifest(run_dir: Path) -> RunManifest:
    """``load_manifest`` for a stage that needs the run's model: a profile run holds reports, not a model."""
    manifest = load_manifest(run_dir)
    if manifest.profile is not None:
        raise UserError(f"{run_dir} is a profile run (reports, no model): pass the export or quantize run "
                        "directories it measured")
    return manifest


def manifest_beside(model_path: Path) -> RunManifest | None:
    """The manifest of the run directory an .onnx file sits in, when that manifest names this file: passing
    ``out/run/model.onnx`` then means the same as passing ``out/run``."""
    if not (model_path.parent / MANIFEST).is_file():
        return None
    manifest = load_manifest(model_path.parent)
    return manifest if manifest.artifacts and manifest.artifacts.onnx == model_path.name else None


def metadata_model(path: Path, onnx_model: onnx.ModelProto) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The manifest's ``model`` and ``preprocessing`` for a bare .onnx file, from the ``vmlp.*`` metadata_props
    that `export` writes into every model (so a copied-out file still says it has random weights and how to
    preprocess); for a model from elsewhere just its name. Unreadable values are left out, never guessed."""
    metadata = {p.key: p.value for p in onnx_model.metadata_props}
    model: dict[str, Any] = {"name": metadata.get("vmlp.variant") or path.stem}
    if "vmlp.variant" not in metadata:
        return model, None

    def parsed(key: str) -> Any:
        try:
            return json.loads(metadata[key])
        except (KeyError, json.JSONDecodeError):
            return None

    fields = {"family": metadata.get("vmlp.family"), "tiny": parsed("vmlp.tiny"),
              "input_size": parsed("vmlp.input_size"), "num_classes": parsed("vmlp.num_classes"),
              "random_weights": parsed("vmlp.random_weights")}
    types = {"family": str, "tiny": bool, "input_size": list, "num_classes": int, "random_weights": bool}
    model.update({k: v for k, v in fields.items() if isinstance(v, types[k])})
    if "family" in model and "random_weights" in model:
        checkpoint = metadata.get("vmlp.checkpoint")
        model["checkpoint"] = {"name": checkpoint} if checkpoint else None
    preprocessing = parsed("vmlp.preprocessing")
    return model, preprocessing if isinstance(preprocessing, dict) else None


def _not_a_manifest(path: Path, problem: str) -> str:
    return (f"{path} is not a vmlp-deploy manifest ({problem}; hand-edited?): re-run the stage that wrote it, or "
            "restore the file")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints and models can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def process_peak_rss_mb(pid: int | str = "self") -> float | None:
    """A live process's peak resident memory (Linux VmHWM), or None where /proc cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM where Linux has it (``ru_maxrss`` keeps the pre-exec peak of
    a big parent that forked us, so a child of a 2 GB benchmark would report 2 GB), else ``ru_maxrss``."""
    own = process_peak_rss_mb()
    return own if own is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
