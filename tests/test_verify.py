"""`mapo-bench verify` (issue 15): every stage records its files' sizes and SHA-256 and seals its manifest;
a one-byte change anywhere an output of record lives is found, named, and exits 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mapo_bench.errors import MapoBenchError
from mapo_bench.integrity import sealed, self_digest, verify


def test_sealed_digest_covers_every_field_but_itself():
    record = sealed({"a": 1, "files": {"x": {"bytes": 1, "sha256": "0"}}})
    assert record["manifest_sha256"] == self_digest(record)
    assert self_digest({**record, "a": 2}) != record["manifest_sha256"]


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_clean_run_verifies_and_every_kind_of_change_is_named(tiny_runs, tmp_path):
    _, (run, _) = tiny_runs
    report = verify(run)
    assert report.problems == []
    # every output of record is covered: each shard, weight file, sample image, score table, report file
    recorded = set()
    for manifest in [*run.rglob("manifest.json"), *run.rglob("severity.json")]:
        record = json.loads(manifest.read_text())
        root = (manifest.parent / record.get("files_root", ".")).resolve()
        recorded |= {(root / name).resolve() for name in record.get("files", {})}
    outputs = [*run.glob("datasets/*/data/*.parquet"), *run.glob("models/**/*.safetensors"),
               *run.glob("samples/**/*.png"), *run.glob("scores/**/scores.parquet"),
               *(p for p in (run / "report").iterdir() if p.name != "manifest.json")]
    assert outputs and {p.resolve() for p in outputs} <= recorded
    assert report.files == sum(len(json.loads(m.read_text()).get("files", {}))
                               for m in [*run.rglob("manifest.json"), *run.rglob("severity.json")])
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    targets = {
        "dataset shard": next((copy / "datasets" / "cartoon" / "data").glob("*.parquet")),
        "weights": next((copy / "models").rglob("*.safetensors")),
        "sample image": next((copy / "samples").rglob("*.png")),
        "scores": next((copy / "scores").rglob("scores.parquet")),
        "report": copy / "report" / "results.json",
        "pipeline": copy / "pipeline.json",
        "severity": copy / "datasets" / "cartoon" / "severity.json",
        "a manifest": copy / "datasets" / "safety" / "manifest.json",
    }
    for path in targets.values():
        _flip_one_byte(path)
    problems = "\n".join(verify(copy).problems)
    for kind, path in targets.items():
        assert str(path) in problems, kind
    cli = subprocess.run([sys.executable, "-m", "mapo_bench", "verify", str(copy)], capture_output=True, text=True)
    assert cli.returncode == 1 and f"{len(targets)} problem(s)" in cli.stdout
    assert subprocess.run([sys.executable, "-m", "mapo_bench", "verify", str(run / "datasets")],
                          capture_output=True).returncode == 0


def test_verify_needs_a_recorded_folder(tmp_path):
    with pytest.raises(MapoBenchError, match="no such folder"):
        verify(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MapoBenchError, match="no mapo-bench manifest"):
        verify(tmp_path / "empty")
