"""Subject fidelity (issue 14): the imagefolder reader, ``clip-i`` and ``dino`` against hand computations on
tiny random models saved in hub layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mapo_bench.errors import MapoBenchError, ModelNotFoundError

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _images(n: int, seed: int, size: int = 32) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _subject_folder(path, images, metadata: bool = True):
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, image in enumerate(images):
        image.save(path / f"subject_{i}.png")
        lines.append(json.dumps({"file_name": f"subject_{i}.png", "prompt": f"a photo of sks dog {i}"}))
    if metadata:
        (path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_mean_cosine_to_references_by_hand():
    """Rows (1, 0) and (1, 1) against references (1, 0) and (0, 2): cosines {1, 0} -> 0.5 and
    {1/sqrt 2, 1/sqrt 2} -> 0.70711 (the references' length does not matter)."""
    from mapo_bench.evaluators.subject import mean_cosine_to_references

    got = mean_cosine_to_references(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert got.tolist() == pytest.approx([0.5, 2 ** -0.5], abs=1e-12)


def test_clip_i_is_mean_cos_to_the_subject_images(tiny_clip, tmp_path):
    from test_evaluators import _clip_embeds, _cos

    from mapo_bench.evaluators.subject import ClipImageSimilarity

    subject, samples = _images(3, seed=1), _images(4, seed=2)
    metric = ClipImageSimilarity.load(model=str(tiny_clip), subject_images=_subject_folder(tmp_path / "s", subject))
    _, sample_embeds, _ = _clip_embeds(tiny_clip, samples, ["x"])
    _, subject_embeds, _ = _clip_embeds(tiny_clip, subject, ["x"])
    expected = torch.stack([_cos(sample_embeds, s.expand_as(sample_embeds)) for s in subject_embeds]).mean(0)
    np.testing.assert_allclose(metric.score(samples, ["p"] * 4), expected.numpy(), atol=1e-5)
    assert metric.score(subject[:1], ["p"]).item() > metric.score(samples[:1], ["p"]).item()  # itself scores higher
    assert metric.version.startswith("vit-l-14:")


def test_dino_is_mean_cos_of_cls_embeddings(tmp_path):
    from transformers import ViTModel

    from mapo_bench.evaluators.subject import DinoSimilarity
    from mapo_bench.evaluators.tiny import build_tiny_dino

    folder = build_tiny_dino(tmp_path / "dino")
    subject, samples = _images(2, seed=3), _images(3, seed=4)
    metric = DinoSimilarity.load(model=str(folder), subject_images=_subject_folder(tmp_path / "s", subject))
    vit = ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval()

    def cls(images):  # preprocessing by hand: images are at the model's size; scale, ImageNet mean / std
        pixels = torch.stack([(torch.tensor(np.array(im), dtype=torch.float64).permute(2, 0, 1) / 255.0
                               - IMAGENET_MEAN) / IMAGENET_STD for im in images]).float()
        with torch.no_grad():
            hidden = vit.embeddings(pixels)
            layers = vit.layers if hasattr(vit, "layers") else vit.encoder.layer  # transformers 5 / 4
            for layer in layers:
                out = layer(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
            return vit.layernorm(hidden)[:, 0]

    a, b = cls(samples), cls(subject)
    expected = ((a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T).mean(1)
    np.testing.assert_allclose(metric.score(samples, ["p"] * 3), expected.numpy(), atol=1e-5)


def test_subject_metrics_need_their_images_and_name_a_missing_model(tiny_clip, tmp_path):
    from mapo_bench.registry import EVALUATORS

    for name in ("clip-i", "dino"):
        with pytest.raises(MapoBenchError, match="subject_images=DIR"):
            EVALUATORS.get(name).load(model=str(tiny_clip))
    folder = _subject_folder(tmp_path / "s", _images(1, seed=0))
    with pytest.raises(ModelNotFoundError) as info:
        EVALUATORS.get("dino").load(subject_images=folder)
    assert "facebook/dino-vits16" in str(info.value) and "\n" not in str(info.value)


def test_the_metric_version_follows_the_subject(tiny_clip, tmp_path):
    from mapo_bench.evaluators.subject import ClipImageSimilarity

    one = ClipImageSimilarity.load(model=str(tiny_clip), subject_images=_subject_folder(tmp_path / "a", _images(2, 1)))
    two = ClipImageSimilarity.load(model=str(tiny_clip), subject_images=_subject_folder(tmp_path / "b", _images(2, 9)))
    same = ClipImageSimilarity.load(model=str(tiny_clip), subject_images=_subject_folder(tmp_path / "c", _images(2, 1)))
    assert one.version != two.version and one.version == same.version


# -- the imagefolder reader ----------------------------------------------------------------------------------
def test_imagefolder_reads_metadata_and_plain_folders(tmp_path):
    from PIL import Image

    from mapo_bench.data.imagefolder import read_image_folder

    folder = _subject_folder(tmp_path / "meta", _images(3, seed=0))
    read = read_image_folder(folder, min_images=3, require_prompts=True)
    assert [r.prompt for r in read.images] == ["a photo of sks dog 0", "a photo of sks dog 1", "a photo of sks dog 2"]
    assert all(r.original_size == (32, 32) and r.image.mode == "RGB" for r in read.images)
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGBA", (8, 6), (255, 0, 0, 128)).save(plain / "b.png")
    Image.new("L", (5, 5), 7).save(plain / "a.png")
    read = read_image_folder(plain)
    assert [r.file.name for r in read.images] == ["a.png", "b.png"]
    assert [r.image.mode for r in read.images] == ["RGB", "RGB"] and read.images[1].original_size == (8, 6)


def test_imagefolder_converts_16_bit_cmyk_and_alpha_to_rgb(tmp_path):
    """A 16-bit ramp keeps its ramp (value / 257, not clipped at 255); CMYK (0, 255, 0, 0) is magenta."""
    from PIL import Image

    from mapo_bench.data.imagefolder import read_image_folder

    (tmp_path / "f").mkdir()
    ramp = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(ramp).save(tmp_path / "f" / "a16.png")
    Image.new("CMYK", (2, 2), (0, 255, 0, 0)).save(tmp_path / "f" / "b.jpg")
    Image.new("LA", (2, 2), (9, 0)).save(tmp_path / "f" / "c.png")
    a, b, c = (r.image for r in read_image_folder(tmp_path / "f").images)
    assert np.array(a)[0, :, 0].tolist() == [0, 100, 255]
    assert b.getpixel((0, 0)) == (255, 0, 255) and c.getpixel((0, 0)) == (9, 9, 9)


def test_imagefolder_applies_exif_orientation(tmp_path):
    from PIL import Image

    from mapo_bench.data.imagefolder import read_image_folder

    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (tmp_path / "f").mkdir()
    image.save(tmp_path / "f" / "x.jpg", exif=exif)
    record = read_image_folder(tmp_path / "f").images[0]
    assert record.original_size == (20, 10) and record.image.size == (10, 20)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such image folder"),
    ("not-json", "metadata.jsonl line 2: not JSON"),
    ("no-file-name", "metadata.jsonl line 1: needs a 'file_name'"),
    ("missing-file", "line 1: file 'nope.png' not found"),
    ("outside", "points outside the folder"),
    ("twice", "line 2: file_name 'subject_0.png' listed twice"),
    ("unlisted", "1 image file(s) of the folder not listed (first: 'extra.png')"),
    ("blank-prompt", "'prompt' must be a non-empty string"),
    ("negative-seed", "'seed' must be a non-negative integer"),
    ("corrupt", "subject_0.png (metadata.jsonl line 1): cannot decode image"),
    ("too-few", "1 usable image(s); at least 3 needed"),
])
def test_imagefolder_bad_input_is_one_line_naming_the_file(tmp_path, case, message):
    from mapo_bench.data.imagefolder import read_image_folder

    folder = _subject_folder(tmp_path / "f", _images(1, seed=0))
    meta = folder / "metadata.jsonl"
    edits = {
        "missing": lambda: None,
        "not-json": lambda: meta.write_text(meta.read_text() + "{oops\n"),
        "no-file-name": lambda: meta.write_text('{"prompt": "x"}\n'),
        "missing-file": lambda: meta.write_text('{"file_name": "nope.png"}\n'),
        "outside": lambda: meta.write_text('{"file_name": "../subject_0.png"}\n'),
        "twice": lambda: meta.write_text(meta.read_text() * 2),
        "unlisted": lambda: _images(1, seed=0)[0].save(folder / "extra.png"),
        "blank-prompt": lambda: meta.write_text('{"file_name": "subject_0.png", "prompt": "  "}\n'),
        "negative-seed": lambda: meta.write_text('{"file_name": "subject_0.png", "seed": -1}\n'),
        "corrupt": lambda: (folder / "subject_0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"),
        "too-few": lambda: None,
    }
    edits[case]()
    target = tmp_path / "absent" if case == "missing" else folder
    with pytest.raises(MapoBenchError) as info:
        read_image_folder(target, min_images=3 if case == "too-few" else 1)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_imagefolder_skips_bad_files_only_when_asked(tmp_path):
    from mapo_bench.data.imagefolder import read_image_folder

    folder = _subject_folder(tmp_path / "f", _images(3, seed=0))
    (folder / "subject_1.png").write_bytes(b"")
    read = read_image_folder(folder, skip_bad=True)
    assert [r.file.name for r in read.images] == ["subject_0.png", "subject_2.png"]
    assert list(read.skipped) == ["subject_1.png"] and "cannot decode" in read.skipped["subject_1.png"]
