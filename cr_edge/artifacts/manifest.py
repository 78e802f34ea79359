"""Run-folder manifests: names, sizes and sha256 of what a command wrote, written last.

A file that changed after it was written (a partial copy, a disk error, a hand edit,
a swapped model) must not be validated or profiled as if it were the export. Every
writer lists its files here once they are all on disk; ``validate`` and ``profile``
refuse an artifact whose bytes no longer match its entry. The manifest itself is
written atomically, so it only ever describes complete files. numpy-free and
torch-free: it runs on the edge box.

A folder also says whether it is complete. Right before a writer changes its first
file there, the manifest is rewritten with ``"state": "writing"`` and the stage and
command that write it (``mark_writing``); the writer's last act, ``write_manifest``,
drops that state. A folder interrupted at any moment in between, or one being
written right now, is refused by every reader as incomplete, naming the command
that rewrites it.

An export folder also records whether the export passed its own cpu parity check
(``cr_edge.export.self_check``), under ``"export_check"``: ``passed``, or ``failed``
with the failing checks. The check reads the folder back before its manifest is
written (``reading_back``), so an export killed during it is incomplete like any
other. ``validate`` and ``quantize`` refuse a failed export unless forced
(``refuse_failed_export``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from cr_edge.artifacts import atomic
from cr_edge.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "cr-edge-manifest"
WRITING = "writing"
EXPORT_CHECK = "export_check"
CHECK_PASSED, CHECK_FAILED = "passed", "failed"
_reading_back: set[Path] = set()  # folders this process writes and reads back before finishing


def write_manifest(
    folder: Path, files: Iterable[Path | str], export_check: dict | None = None
) -> Path:
    """Add ``files`` (paths inside ``folder``) to ``folder/manifest.json``; entries still on disk stay.

    ``export_check``: the export's own parity verdict, ``{"state": ..., "failed": [...]}``.
    """
    folder = Path(folder)
    entries = {
        name: entry
        for name, entry in _read(folder / MANIFEST, strict=False).items()
        if (folder / name).is_file()
    }
    for file in files:
        path = folder / file if Path(file).parent == Path() else Path(file)  # bare name: inside
        data = path.read_bytes()
        entries[path.resolve().relative_to(folder.resolve()).as_posix()] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    doc = {"format": FORMAT, "files": dict(sorted(entries.items()))}
    if export_check is not None:
        doc[EXPORT_CHECK] = export_check
    atomic.write_json(folder / MANIFEST, doc)
    return folder / MANIFEST


def mark_writing(folder: Path, stage: str, command: str) -> None:
    """Mark ``folder`` incomplete until the next ``write_manifest``; earlier entries are kept."""
    folder = Path(folder)
    doc = _load(folder / MANIFEST) or {}
    files = doc.get("files") if doc.get("format") == FORMAT else None
    marker = {"format": FORMAT, "state": WRITING, "stage": stage, "command": command}
    atomic.write_json(
        folder / MANIFEST, {**marker, "files": files if isinstance(files, dict) else {}}
    )


def require_complete(folder: Path) -> None:
    """``InputError`` if a writer marked ``folder`` and has not finished it (killed, or still running)."""
    doc = _writing(folder)
    if doc is not None:
        stage, command = doc.get("stage", "export"), doc.get("command", "cr-edge export")
        raise InputError(f"{folder}: incomplete {stage} (interrupted?): rerun {command}")


def is_incomplete(folder: Path) -> bool:
    """A writer marked ``folder`` and has not finished it: rerunning it may rewrite it."""
    return _writing(folder) is not None


@contextlib.contextmanager
def reading_back(folder: Path) -> Iterator[None]:
    """Let this process read the files it has just written into ``folder``, before the
    manifest that makes the folder complete (and lists their hashes) is written."""
    key = Path(folder).resolve()
    _reading_back.add(key)
    try:
        yield
    finally:
        _reading_back.discard(key)


def refuse_failed_export(artifact: Path, force: bool = False) -> None:
    """``InputError`` if ``artifact``'s export failed its own cpu parity check.

    What ``validate`` and ``quantize`` ask before working on an export; ``force`` runs
    them anyway (to look at the failure in detail, or on purpose).
    """
    folder = Path(artifact).parent
    check = _export_check(folder)
    if force or check.get("state") != CHECK_FAILED:
        return
    failed = ", ".join(str(name) for name in check.get("failed") or []) or "parity"
    raise InputError(
        f"{folder}: the export failed its own cpu parity check ({failed}): fix the model "
        "or pass --accept-failed-export"
    )


def _export_check(folder: Path) -> dict:
    doc = _load(Path(folder) / MANIFEST)
    check = doc.get(EXPORT_CHECK) if isinstance(doc, dict) else None
    return check if isinstance(check, dict) else {}


def _writing(folder: Path) -> dict | None:
    doc = _load(Path(folder) / MANIFEST)
    return doc if isinstance(doc, dict) and doc.get("state") == WRITING else None


def verify(path: Path, data: bytes | None = None) -> None:
    """Refuse ``path`` if its folder is incomplete or its manifest lists other bytes; no manifest, no check."""
    path = Path(path)
    if path.parent.resolve() in _reading_back:
        return  # its writer reading it back: the manifest still lists the earlier files
    require_complete(path.parent)
    entry = _read(path.parent / MANIFEST, strict=True).get(path.name)
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise InputError(f"{path}: its {MANIFEST} entry is not an object; re-export it")
    data = path.read_bytes() if data is None else data
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise InputError(
            f"{path}: changed since it was written (size or sha256 differs from "
            f"{MANIFEST}); re-export it"
        )


def _load(path: Path) -> object:
    """The manifest's JSON, or None where there is none or it does not parse (``_read`` says why)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _read(path: Path, strict: bool) -> dict[str, dict]:
    """The manifest's entries; a damaged manifest is an error when checking, ignored when rewriting."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = doc["files"] if doc.get("format") == FORMAT else None
        if not isinstance(files, dict):
            raise ValueError("no 'files' object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError) as e:
        if strict:
            raise InputError(f"{path}: not a readable cr-edge manifest ({e}); re-export") from e
        return {}
    return files


def refuse_existing(out: Path, marker: str, force: bool) -> None:
    """``InputError`` if ``out`` is a file, or already holds ``marker`` and ``force`` is off.

    Every stage calls this before writing, from the CLI and the Python API alike, so
    no caller overwrites a finished folder without asking for it. An interrupted one
    (its manifest still says it is being written) is rewritten by rerunning the stage.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder; choose another path")
    if (out / marker).exists() and not force and not is_incomplete(out):
        raise InputError(f"--out {out}: already holds {marker}; pass --force to overwrite")
