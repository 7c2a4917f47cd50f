"""The bad-input corpus of docs/reliability.md (issue 15): one test per row of its table.

Refused inputs: one line naming the file, row or key, exit code 2, nothing written (but the hidden, empty
lock file a writing command holds). Accepted inputs: converted, and the conversion counted where the
stage records what it read. Commands run in-process through the console entry (``cli.main``), so a row
costs no interpreter start.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pairs_fixture import write_pairs

ROOT = Path(__file__).resolve().parents[1]
TOY_MAPO = ROOT / "recipes" / "train" / "toy_mapo.yaml"
TOY_QUICK = ROOT / "pipelines" / "toy-quick.yaml"


def main(capsys, monkeypatch, *args) -> tuple[int, list[str]]:
    """Run ``mapo-bench ARGS`` in-process: (exit code, the lines it printed)."""
    from mapo_bench.cli import main as entry

    monkeypatch.setattr(sys, "argv", ["mapo-bench", *map(str, args)])
    capsys.readouterr()
    try:
        entry()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip().splitlines()


def refused(capsys, monkeypatch, *args, names: str, written: Path | None = None) -> str:
    """Assert the command is refused in one line (exit 2) that contains ``names``; nothing at ``written``."""
    code, lines = main(capsys, monkeypatch, *args)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert names in lines[0], lines[0]
    if written is not None:
        assert not written.exists(), f"{written} was written"
    return lines[0]


def encode(image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares width x height RGB pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def pairs_with(tmp_path: Path, change, n: int = 20) -> Path:
    """A 20-pair dataset whose shard went through ``change(frame) -> frame``."""
    folder = write_pairs(tmp_path / "pairs", n=n)
    shard = folder / "data" / "train-00000.parquet"
    change(pd.read_parquet(shard)).to_parquet(shard, index=False)
    return folder


def train_args(dataset: Path, out: Path, *extra: str) -> list:
    return ["train", "--method", "mapo", "--config", TOY_MAPO, "--dataset", dataset, "--out", out,
            "max_steps=2", "batch_size=4", "log.progress=false", *extra]


def validation_errors(dataset: Path) -> list[str]:
    from mapo_bench.data.validate import validate_dataset

    return validate_dataset(dataset)["errors"]


def set_cell(column: str, row: int, value):
    def change(frame):
        frame[column] = frame[column].astype(object)
        frame.at[row, column] = value
        return frame
    return change


# -- refused: dataset rows (validate-dataset names the row; train refuses in one line, writes no model) ------
BAD_ROWS = {
    "zero-byte image": (set_cell("jpg_0", 3, b""), "row 3", "empty (zero bytes)"),
    "truncated image": (lambda f: set_cell("jpg_0", 3, f.at[3, "jpg_0"][: len(f.at[3, "jpg_0"]) // 2])(f), "row 3",
                        "cannot decode image"),
    "enormous image (100 M px header)": (set_cell("jpg_1", 3, header_only_png(10_000, 10_000)), "row 3",
                                         "DecompressionBombError"),
    "blank caption": (set_cell("caption", 3, " \t "), "row 3", "caption"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_named_by_validate_and_refused_by_train(case, tmp_path, capsys, monkeypatch):
    change, where, why = BAD_ROWS[case]
    dataset = pairs_with(tmp_path, change)
    errors = validation_errors(dataset)
    assert len(errors) == 1 and where in errors[0] and why in errors[0], errors
    line = refused(capsys, monkeypatch, *train_args(dataset, tmp_path / "model"), names=where,
                   written=tmp_path / "model")
    assert str(dataset) in line


def test_labels_stored_as_strings_are_refused(tmp_path, capsys, monkeypatch):
    dataset = pairs_with(tmp_path, lambda f: f.assign(label_0=f["label_0"].astype(str)))
    errors = validation_errors(dataset)
    assert any("column 'label_0' has type" in e and "expected float or int" in e for e in errors), errors
    refused(capsys, monkeypatch, *train_args(dataset, tmp_path / "model"), names="row 0 column 'label_0'",
            written=tmp_path / "model")


def test_duplicate_pair_ids_are_refused(tmp_path, capsys, monkeypatch):
    dataset = pairs_with(tmp_path, lambda f: f.assign(pair_id=[0, 1, 2, 2] + list(range(4, len(f)))))
    errors = validation_errors(dataset)
    assert any("row 3" in e and "pair_id 2 repeats row 2" in e for e in errors), errors
    refused(capsys, monkeypatch, *train_args(dataset, tmp_path / "model"), names="row 3 column 'pair_id'",
            written=tmp_path / "model")


def test_a_dataset_of_ties_only_fails_validation_with_the_count(tmp_path, capsys, monkeypatch):
    dataset = pairs_with(tmp_path, lambda f: f.assign(label_0=0.5, label_1=0.5), n=6)
    code, lines = main(capsys, monkeypatch, "validate-dataset", dataset)
    assert code == 2 and any("all 6 rows are ties" in line for line in lines), lines


# -- refused: config and pipeline files ----------------------------------------------------------------
def pipeline_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def run_args(pipeline: Path, tmp_path: Path) -> list:
    return ["run", pipeline, "--out", tmp_path / "run", "--dry-run"]


def test_a_yaml_file_that_is_not_utf8_is_refused_naming_the_line(tmp_path, capsys, monkeypatch):
    path = pipeline_file(tmp_path, TOY_QUICK.read_bytes() + b"\n# caf\xe9\n")
    lines = TOY_QUICK.read_bytes().count(b"\n") + 2
    refused(capsys, monkeypatch, *run_args(path, tmp_path), names=f"line {lines} is not UTF-8",
            written=tmp_path / "run")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"optim:\n  lr: 1.0e-4  # \xff\n")
    refused(capsys, monkeypatch, *train_args(tmp_path / "nowhere", tmp_path / "model", "--config", recipe),
            names=f"{recipe}: line 2 is not UTF-8", written=tmp_path / "model")


@pytest.mark.parametrize("text, names", [
    ("name: x\nbackend: &b [1, *b]\n", "key backend.1 refers to itself"),
    ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else '1'}]\n" for i in range(7)), "expands to more than"),
], ids=["self-referencing anchor", "alias bomb"])
def test_self_referencing_yaml_is_refused(text, names, tmp_path, capsys, monkeypatch):
    refused(capsys, monkeypatch, *run_args(pipeline_file(tmp_path, text), tmp_path), names=names,
            written=tmp_path / "run")


@pytest.mark.parametrize("old, new, names", [
    ("recipes/train/toy_mapo.yaml", "recipes/train/toy_mapo_missing.yaml", "toy_mapo_missing.yaml: config file not found"),
    ("toy-content, toy-safety]", "toy-contnt, toy-safety]", "unknown evaluator 'toy-contnt' (did you mean 'toy-content'?)"),
    ("fidelity_metric: toy-content", "fidelity_metric: toy-contnt", "unknown evaluator 'toy-contnt'"),
    ("seeds: [0", "seeds: [-1", "key 'seeds.0': Input should be greater than or equal to 0"),
], ids=["missing recipe", "unknown metric", "unknown fidelity metric", "negative seed"])
def test_a_pipeline_with_a_bad_reference_is_refused(old, new, names, tmp_path, capsys, monkeypatch):
    text = TOY_QUICK.read_text()
    assert old in text
    refused(capsys, monkeypatch, *run_args(pipeline_file(tmp_path, text.replace(old, new, 1)), tmp_path), names=names,
            written=tmp_path / "run")


def test_negative_seeds_are_refused_by_every_stage(tmp_path, capsys, monkeypatch):
    refused(capsys, monkeypatch, "sample", "--backend", "toy", "--prompts", "toy:test", "--seeds", "0,-1",
            "--out", tmp_path / "samples", names="key 'seeds.1'", written=tmp_path / "samples")
    refused(capsys, monkeypatch, *train_args(tmp_path / "nowhere", tmp_path / "model", "seed=-3"), names="key 'seed'",
            written=tmp_path / "model")
    refused(capsys, monkeypatch, "build-dataset", "pick-style", "--split", "cartoon", "--backend", "toy",
            "--num-prompts", "2", "--seed", "-1", "--out", tmp_path / "data", names="key 'seed'",
            written=tmp_path / "data")


# -- refused: a model folder of another family -----------------------------------------------------------
def test_a_model_folder_of_another_family_is_refused_before_anything_is_written(tiny_sdxl, tmp_path, capsys, monkeypatch):
    from mapo_bench.toy.shipped import resolve_toy_model

    toy = resolve_toy_model("toy")
    cases = [("sd15", tiny_sdxl, "a StableDiffusionXLPipeline, not the StableDiffusionPipeline backend 'sd15' loads; "
                                 "pass --backend sdxl"),
             ("toy", tiny_sdxl, "a StableDiffusionXLPipeline, not a toy model; pass --backend sdxl"),
             ("sdxl", toy, "not a diffusers pipeline folder (no model_index.json); a toy model: pass --backend toy")]
    for k, (backend, model, names) in enumerate(cases):
        out = tmp_path / f"samples-{k}"
        refused(capsys, monkeypatch, "sample", "--backend", backend, "--model", model, "--prompts", "toy:test",
                "--seeds", "0", "--out", out, names=names, written=out)


# -- accepted and converted ----------------------------------------------------------------------------
def odd_images():
    """(name, encoded bytes, the RGB pixels a reader must return) for CMYK, 16-bit, alpha and EXIF-rotated."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8))
    grey16 = (rng.random((24, 32)) * 65535).astype(np.uint16)
    exif = rgb.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rotated = encode(rgb, "PNG", exif=exif.tobytes())
    cmyk = encode(rgb.convert("CMYK"), "TIFF")
    return [
        ("cmyk.tif", cmyk, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))),
        ("grey16.png", encode(Image.fromarray(grey16)), np.repeat(np.round(grey16 / 257.0).astype(np.uint8)[..., None], 3, 2)),
        ("alpha.png", encode(rgb.convert("RGBA")), np.asarray(rgb)),
        ("exif.png", rotated, np.asarray(rgb.transpose(Image.Transpose.ROTATE_270))),
    ]


EXPECTED_COUNTS = {"EXIF-rotated": 1, "from CMYK": 1, "from I;16": 1, "from RGBA": 1}


def test_cmyk_16bit_alpha_and_exif_rotated_rows_decode_to_upright_rgb_and_are_counted(tmp_path):
    from mapo_bench.data.reader import decode_image
    from mapo_bench.data.validate import validate_dataset

    images = odd_images()
    for name, data, pixels in images:
        decoded = decode_image(data, 0, "jpg_0", name)
        assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), pixels), name

    def change(frame):
        frame["jpg_0"] = frame["jpg_0"].astype(object)
        for row, (_, data, _) in enumerate(images):
            frame.at[row, "jpg_0"] = data
        return frame

    report = validate_dataset(pairs_with(tmp_path, change))
    assert report["errors"] == [] and report["converted_on_decode"] == EXPECTED_COUNTS


def test_an_image_folder_of_odd_images_builds_with_the_conversions_in_its_manifest(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data, _ in odd_images():
        (folder / name).write_bytes(data)
    code, lines = main(capsys, monkeypatch, "build-dataset", "from-images", "--backend", "toy", "--out", tmp_path / "data",
                       f"images={folder}", "token=sks", "subject_class=dog", "pairs_per_prompt=1")
    assert code == 0, lines
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["images"]["converted_to_rgb"] == EXPECTED_COUNTS
    from mapo_bench.data.imagefolder import read_image_folder

    read = {image.file.name: np.asarray(image.image) for image in read_image_folder(folder).images}
    for name, _, pixels in odd_images():
        assert np.array_equal(read[name], pixels), name


def test_captions_longer_than_the_text_encoder_reads_are_truncated_and_counted(tmp_path, capsys, monkeypatch):
    long_caption = " ".join(["a small red circle on the left"] * 12)
    dataset = pairs_with(tmp_path, set_cell("caption", 5, long_caption))
    code, lines = main(capsys, monkeypatch, *train_args(dataset, tmp_path / "model"))
    assert code == 0, lines
    assert any("1 of 20 captions are longer than the text encoder reads" in line for line in lines), lines
    assert json.loads((tmp_path / "model" / "manifest.json").read_text())["counts"]["captions_truncated"] == 1


def test_every_backend_counts_captions_past_its_text_encoders_limit(tiny_sd15, tiny_sdxl, tiny_sd3):
    """Against the limit each pipeline encodes at: CLIP's 77 tokens; SD3's T5 at 256 (its max_sequence_length)."""
    from mapo_bench.backends import load_backend

    short, clip_long = "a red circle", " ".join(["circle"] * 80)
    for name, model in (("sd15", tiny_sd15), ("sdxl", tiny_sdxl), ("sd3", tiny_sd3)):
        backend = load_backend(name, str(model))
        assert backend.truncated_captions([short, clip_long, short]) == 1, name
    toy = load_backend("toy", "toy")
    limit = toy.pipeline.tokenizer.max_length
    assert toy.truncated_captions([" ".join(["circle"] * (limit - 2)), " ".join(["circle"] * (limit - 1))]) == 1
