"""The from-images task (issue 14): chosen = the user's images (resized, centre-cropped, original sizes
recorded), rejected = the reference's samples of their captions; the folder's content is the dataset's
identity; bad input is one line; severity skips the prefix excess the given images cannot have."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo_bench.config import validate
from mapo_bench.data.builder import build_dataset
from mapo_bench.data.config import BuildConfig
from mapo_bench.data.from_images import fill_template, fit
from mapo_bench.errors import MapoBenchError

SAMPLER = {"steps": 2, "guidance": 5.0, "height": 64, "width": 64}


def subject_folder(path, n=3, size=(96, 64), seed=0):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path / f"dog_{i}.png")
    return path


def cfg(model, images, out, **kw):
    base = {"task": "from-images", "model": str(model), "images": str(images), "token": "sks",
            "subject_class": "dog", "sampler": SAMPLER, "batch_size": 2, "out": str(out)}
    return validate(BuildConfig, {**base, **kw})


def rows(folder):
    return [r for shard in sorted((folder / "data").glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]


def test_fit_covers_then_crops_the_centre():
    """A 4x2 image whose left half is black and right half white, fitted to 2x2: scale 1, the centre
    two columns are kept (one black, one white); fitted to 8x8 it is scaled by 4 and cropped to 8 wide."""
    image = Image.fromarray(np.array([[0, 0, 255, 255]] * 2, dtype=np.uint8)).convert("RGB")
    small = np.array(fit(image, (2, 2)))[..., 0]
    assert small.tolist() == [[0, 255], [0, 255]]
    assert fit(image, (8, 8)).size == (8, 8)


def test_caption_templates_fill_and_name_what_is_missing():
    assert fill_template("a photo of {token} {class}", "sks", "dog", None, "x") == "a photo of sks dog"
    assert fill_template("{caption}, {token} style", "tk", None, "a dancer", "x") == "a dancer, tk style"
    with pytest.raises(MapoBenchError, match=r"needs \{class\}: give --class"):
        fill_template("a photo of {token} {class}", "sks", None, None, "img.png")
    with pytest.raises(MapoBenchError, match=r"unknown placeholder \{colour\}"):
        fill_template("a {colour} dog", "sks", "dog", None, "img.png")


def test_from_images_pairs_the_users_images_with_the_references_samples(tiny_sdxl, tmp_path):
    images = subject_folder(tmp_path / "subject")
    folder = build_dataset(cfg(tiny_sdxl, images, tmp_path / "ds", pairs_per_prompt=2,
                               caption_templates=["a photo of {token} {class}", "a picture of {token} {class}"],
                               image_source="my camera", image_license="CC-BY-4.0"))
    got = rows(folder)
    assert len(got) == 3 * 2 * 2  # images x templates x pairs per caption
    captions = sorted({r["caption"] for r in got})
    assert captions == ["a photo of sks dog", "a picture of sks dog"]
    for row in got:
        side = 0 if row["label_0"] == 1.0 else 1
        assert row[f"prompt_{side}"] is None and row[f"prompt_{1 - side}"] == row["caption"]
        chosen = Image.open(io.BytesIO(row[f"jpg_{side}"])).convert("RGB")
        original = Image.open(images / f"dog_{row['pair_id'] // 4}.png").convert("RGB")
        assert np.array_equal(np.array(chosen), np.array(fit(original, (64, 64))))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["images"]["files"][0] == {"file": "dog_0.png", "original_size": [96, 64]}
    assert manifest["images"]["license"] == "CC-BY-4.0" and manifest["content_digest"]
    card = (folder / "README.md").read_text()
    assert "my camera" in card and "CC-BY-4.0" in card
    # the same command again: complete; a changed image: another dataset, refused with the reason
    assert build_dataset(cfg(tiny_sdxl, images, tmp_path / "ds", pairs_per_prompt=2,
                             caption_templates=["a photo of {token} {class}", "a picture of {token} {class}"],
                             image_source="my camera", image_license="CC-BY-4.0")) == folder
    subject_folder(images, n=1, seed=7)  # dog_0.png now holds other pixels
    with pytest.raises(MapoBenchError, match="the content of the image folder"):
        build_dataset(cfg(tiny_sdxl, images, tmp_path / "ds", pairs_per_prompt=2,
                          caption_templates=["a photo of {token} {class}", "a picture of {token} {class}"],
                          image_source="my camera", image_license="CC-BY-4.0"))


def test_severity_skips_the_prefix_excess_of_given_images(tmp_path):
    from mapo_bench.mismatch import MismatchConfig, measure_mismatch
    from mapo_bench.toy.tiny import build_tiny_toy

    base = build_tiny_toy(tmp_path / "toy")
    folder = build_dataset(validate(BuildConfig, {
        "task": "from-images", "backend": "toy", "model": str(base), "images": str(subject_folder(tmp_path / "s", size=(32, 32))),
        "token": "sks", "subject_class": "dog", "sampler": {"steps": 2, "guidance": 2.0}, "out": str(tmp_path / "ds")}))
    path = measure_mismatch(validate(MismatchConfig, {"dataset": str(folder), "backend": "toy", "reference": str(base),
                                                      "timesteps": 2, "noises": 1, "resamples": 20}))
    measures = json.loads(path.read_text())["measures"]
    assert "given, not generated" in measures["skipped"]["prefix_excess_chosen"]
    assert "prefix_excess_chosen" not in measures and "prefix_excess_rejected" in measures


@pytest.mark.parametrize("args, message", [
    ([], "from-images needs the folder of chosen images: --images DIR"),
    (["--images", "{missing}"], "no such image folder"),
    (["--images", "{two}"], "2 usable image(s); at least 3 needed"),
    (["--images", "{three}", "--token", "sks"], "needs {class}: give --class"),
    (["--images", "{three}", "--token", "sks", "--class", "dog", "--num-prompts", "4"], "remove prompts / num_prompts"),
])
def test_bad_from_images_input_is_one_line_exit_2(tmp_path, args, message):
    folders = {"missing": tmp_path / "nowhere", "two": subject_folder(tmp_path / "two", n=2),
               "three": subject_folder(tmp_path / "three", n=3)}
    argv = [a.format(**folders) for a in args]
    result = subprocess.run([sys.executable, "-m", "mapo_bench", "build-dataset", "from-images", "--backend", "toy",
                             *argv, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_from_images_keys_belong_to_that_task():
    with pytest.raises(Exception, match="apply to the from-images task only"):
        validate(BuildConfig, {"task": "pick-style", "token": "sks"})
