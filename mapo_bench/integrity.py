"""Checksums of every output of record, and ``mapo-bench verify`` (issue 15).

Each stage records, in its manifest, the size and SHA-256 of the files it wrote (``files``: path relative
to ``files_root``, the manifest's folder unless stated) and a SHA-256 of the manifest's own content
(``manifest_sha256``, over the JSON without that key), so a changed byte in a weight, a shard, an image, a
score table, a report file or a manifest itself is found by :func:`verify`. Not recorded: lock files,
the votes database (it changes with every vote), unfinished ``.partial`` folders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELF_KEY = "manifest_sha256"
RECORD_NAMES = ("manifest.json", "severity.json", "checksums.json")  # the JSON files that record other files (or themselves)
SKIPPED_NAMES = ("manifest.json", "checksums.json", "votes.sqlite", "votes.sqlite-wal", "votes.sqlite-shm")
CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(root: Path, paths: list[Path] | None = None) -> dict[str, dict[str, Any]]:
    """``{relative path: {bytes, sha256}}`` of ``paths`` (default: every file under ``root`` but manifests,
    the votes database, locks and anything in a hidden or ``.partial`` folder), in sorted order."""
    root = Path(root)
    if paths is None:
        paths = [p for p in root.rglob("*") if p.is_file() and p.name not in SKIPPED_NAMES
                 and not p.name.endswith(".lock") and not _hidden(p, root)]
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(paths)}


def self_digest(record: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON without its own digest field."""
    body = {k: v for k, v in record.items() if k != SELF_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its self digest added (computed on the JSON it will be written as)."""
    plain = json.loads(json.dumps(record, default=str))
    return {**plain, SELF_KEY: self_digest(plain)}


def write_manifest(path: Path, record: dict[str, Any], root: Path, paths: list[Path] | None = None) -> Path:
    """Write ``record`` at ``path`` with the ``files`` under ``root`` (all, or ``paths``) and its self digest."""
    from mapo_bench.io import write_json_atomic

    return write_json_atomic(path, sealed({**record, "files": file_records(root, paths)}))


def file_problems(root: Path, files: dict[str, dict[str, Any]], where: Path) -> list[str]:
    """One line per recorded file under ``root`` that is missing or whose size or SHA-256 differs."""
    problems = []
    for relative, expected in files.items():
        file = root / relative
        if not file.is_file():
            problems.append(f"{file}: missing (recorded in {where})")
        elif file.stat().st_size != expected["bytes"]:
            problems.append(f"{file}: {file.stat().st_size} bytes, recorded {expected['bytes']} (in {where})")
        elif file_sha256(file) != expected["sha256"]:
            problems.append(f"{file}: content changed (SHA-256 differs from {where})")
    return problems


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass
class VerifyReport:
    """What :func:`verify` found: manifests and files checked, and every problem as one line."""

    manifests: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)


def verify(path: str | Path) -> VerifyReport:
    """Re-hash every file recorded by the manifests under ``path`` (a run, dataset, model or sample folder)."""
    from mapo_bench.errors import MapoBenchError

    path = Path(path)
    if not path.exists():
        raise MapoBenchError(f"{path}: no such folder")
    report = VerifyReport()
    candidates = [path] if path.is_file() else path.rglob("*.json")
    records = sorted(p for p in candidates if p.name in RECORD_NAMES and (path.is_file() or not _hidden(p, path)))
    for record_path in records:
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as exc:
            report.problems.append(f"{record_path}: unreadable ({type(exc).__name__})")
            continue
        if not isinstance(record, dict) or (SELF_KEY not in record and "files" not in record):
            continue  # not a record of this kind (e.g. a model's own config)
        report.manifests += 1
        if SELF_KEY in record and record[SELF_KEY] != self_digest(record):
            report.problems.append(f"{record_path}: the manifest itself was changed (its digest does not match)")
        files = record.get("files") or {}
        report.files += len(files)
        report.problems += file_problems((record_path.parent / record.get("files_root", ".")).resolve(), files,
                                         record_path)
    if not report.manifests:
        raise MapoBenchError(f"{path}: no mapo-bench manifest with recorded files found under it")
    return report
