"""validate-dataset finds schema errors, undecodable images, label problems, ties and duplicates by row."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo_bench.data.builder import write_rows
from mapo_bench.data.validate import validate_dataset
from mapo_bench.errors import MapoBenchError


def png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def row(i: int, **changes) -> dict:
    base = {"caption": f"prompt {i}", "jpg_0": png((i + 1, 0, 0)), "jpg_1": png((0, i + 1, 0)), "label_0": 1.0,
            "label_1": 0.0, "prompt_0": f"A. prompt {i}", "prompt_1": f"B. prompt {i}", "seed": i,
            "model_id": "m", "task": "custom", "pair_id": i, "sampler": "{}"}
    return {**base, **changes}


def folder_with(tmp_path: Path, *shards: list[dict]) -> Path:
    root = tmp_path / "ds"
    for k, shard in enumerate(shards):
        write_rows(root / "data" / f"train-{k:05d}.parquet", shard)
    return root


def test_clean_folder_has_no_findings(tmp_path):
    report = validate_dataset(folder_with(tmp_path, [row(0), row(1)], [row(2)]))
    assert (report["rows"], report["shards"], report["errors"], report["warnings"]) == (3, 2, [], [])
    assert report["image_sizes"] == {"8x8": 6}


def test_row_problems_are_named_by_global_row_and_column(tmp_path):
    shard0 = [row(0), row(1, jpg_1=b"not an image")]
    shard1 = [row(2, label_0=0.5, label_1=0.5),            # global row 2: tie
              row(3, label_0=1.0, label_1=1.0),            # row 3: labels do not sum to 1
              row(4, label_0=float("nan")),                # row 4: missing label
              row(5, label_0=2.0, label_1=-1.0),           # row 5: out of range
              row(6, caption="  "),                        # row 6: empty caption
              row(0, pair_id=7),                           # row 7: same caption and images as row 0
              row(8, pair_id=2),                           # row 8: repeated pair_id
              row(9, jpg_1=png((9, 0, 0)), jpg_0=png((9, 0, 0)))]  # row 9: identical images
    report = validate_dataset(folder_with(tmp_path, shard0, shard1))
    errors = "\n".join(report["errors"])
    assert "row 1 (data/train-00000.parquet row 1), column jpg_1: cannot decode image" in errors
    assert "row 3 (data/train-00001.parquet row 1), columns label_0/label_1: labels 1/1 do not sum to 1" in errors
    assert "row 4 (data/train-00001.parquet row 2), column label_0: label is missing" in errors
    assert "row 5 (data/train-00001.parquet row 3), column label_0: label 2 is outside [0, 1]" in errors
    assert "row 6 (data/train-00001.parquet row 4), column caption: empty" in errors
    assert "row 8 (data/train-00001.parquet row 6), column pair_id: pair_id 2 repeats row 2" in errors
    assert report["ties"] == 1 and report["tie_rows"] == [2]
    assert report["duplicates"] == 1 and report["duplicate_rows"] == [{"row": 7, "same_as": 0}]
    warnings = "\n".join(report["warnings"])
    assert "row 9" in warnings and "same bytes" in warnings
    # rows 1, 3, 4, 6, 8 give one error each; row 5 gives two (label_0 = 2 and label_1 = -1)
    assert report["error_count"] == len(report["errors"]) == 7


def test_schema_errors_and_int_labels(tmp_path):
    root = tmp_path / "ds" / "data"
    root.mkdir(parents=True)
    table = pa.table({"caption": ["a"], "jpg_0": ["text, not bytes"], "label_0": pa.array([1], pa.int64()),
                      "label_1": pa.array([0], pa.int64())})
    pq.write_table(table, root / "train-00000.parquet")
    report = validate_dataset(tmp_path / "ds")
    errors = "\n".join(report["errors"])
    assert "column 'jpg_1' is missing" in errors
    assert "column 'jpg_0' has type string, expected binary" in errors
    assert "column label_" not in errors and "column 'label" not in errors  # int labels (MaPO releases) are valid
    assert any("provenance" in w for w in report["warnings"])


def test_counts_in_manifest_and_card_must_match(tmp_path):
    root = folder_with(tmp_path, [row(0), row(1)])
    (root / "manifest.json").write_text(json.dumps({"counts": {"pairs": 3}}))
    (root / "README.md").write_text("---\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 5\n---\n")
    errors = "\n".join(validate_dataset(root)["errors"])
    assert "counts.pairs is 3 but the shards hold 2 rows" in errors
    assert "num_examples is 5 but the shards hold 2 rows" in errors


def test_single_file_unreadable_file_and_missing_path(tmp_path):
    root = folder_with(tmp_path, [row(0)])
    assert validate_dataset(root / "data" / "train-00000.parquet")["rows"] == 1
    (root / "data" / "train-00001.parquet").write_bytes(b"garbage")
    assert any("not a readable parquet file" in e for e in validate_dataset(root)["errors"])
    with pytest.raises(MapoBenchError, match="no such dataset folder"):
        validate_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MapoBenchError, match="no parquet files"):
        validate_dataset(tmp_path / "empty")


def test_cli_exits_2_on_errors(tmp_path):
    root = folder_with(tmp_path, [row(0, label_1=0.7)])
    env = {**os.environ, "MAPO_BENCH_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mapo_bench", "validate-dataset", str(root)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "do not sum to 1" in json.loads(result.stdout)["errors"][0]



def test_a_dataset_of_ties_only_fails_unless_it_is_class_images(tmp_path):
    """Every row 0.5 / 0.5: an error with the count (exit 2 on the CLI); the same rows in a folder whose
    manifest says class-images (DreamBooth's prior data) are only a warning."""
    root = folder_with(tmp_path, [row(i, label_0=0.5, label_1=0.5) for i in range(3)])
    report = validate_dataset(root)
    assert any("all 3 rows are ties" in e for e in report["errors"])
    cli = subprocess.run([sys.executable, "-m", "mapo_bench", "validate-dataset", str(root)], capture_output=True)
    assert cli.returncode == 2
    (root / "manifest.json").write_text(json.dumps({"config": {"task": "class-images"}}))
    report = validate_dataset(root)
    assert not any("ties" in e for e in report["errors"]) and any("class images" in w for w in report["warnings"])
    one_pair = folder_with(tmp_path / "b", [row(0), row(1, label_0=0.5, label_1=0.5)])
    assert not any("ties" in e for e in validate_dataset(one_pair)["errors"])
