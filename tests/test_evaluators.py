"""Evaluators against independent computations of their formulas (REFERENCE.md section 4) on tiny backbones.

Each test recomputes the score with plain torch ops on the model's own submodules (vision tower,
projections, concept embeddings) and hand-made pixels, never through the evaluator's code path,
and compares to 1e-5. Tiny random-init models are saved in hub layout and loaded from disk.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mapo_bench.errors import MapoBenchError, ModelNotFoundError
from mapo_bench.evaluators import backbones
from mapo_bench.evaluators.base import ScoreContext

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
PROMPTS = ["a red circle on the left", "a photo of a cat", "an astronaut riding a horse", "a small blue square"]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _fresh_backbones():
    backbones.clear()
    yield
    backbones.clear()


def _images(n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _pixels(images: list) -> torch.Tensor:
    """CLIP preprocessing by hand for images already at the model's size: scale to [0,1], CLIP mean/std."""
    return torch.stack([(torch.tensor(np.array(im), dtype=torch.float64).permute(2, 0, 1) / 255.0 - MEAN) / STD
                        for im in images]).float()


def _clip_embeds(folder, images, texts):
    """Image and text embeddings through the CLIPModel's submodules (not get_*_features)."""
    from transformers import CLIPModel

    from mapo_bench.clip_tokenizer import load_clip_tokenizer

    model = CLIPModel.from_pretrained(str(folder)).eval()
    tokens = load_clip_tokenizer()(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=_pixels(images)).pooler_output)
        text = model.text_projection(model.text_model(input_ids=tokens["input_ids"],
                                                      attention_mask=tokens["attention_mask"]).pooler_output)
    return model, image, text


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)


@pytest.fixture(scope="module")
def aesthetic_file(tmp_path_factory):
    from mapo_bench.evaluators.tiny import build_tiny_aesthetic

    return build_tiny_aesthetic(tmp_path_factory.mktemp("aes") / "tiny-aesthetic.pth", input_dim=16)


@pytest.fixture(scope="module")
def hps_folder(tmp_path_factory):
    from mapo_bench.evaluators.tiny import build_tiny_hps

    return build_tiny_hps(tmp_path_factory.mktemp("hps") / "HPSv2")


def _nsfw_images() -> list:
    """Noise, flat colours and a gradient: embeddings spread enough to straddle a threshold."""
    from PIL import Image

    rng = np.random.default_rng(5)
    flat = [Image.new("RGB", (32, 32), tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(4)]
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[:, None, None], (1, 32, 3)))
    return _images(4, seed=5) + flat + [ramp]


@pytest.fixture(scope="module")
def checker_folder(tmp_path_factory):
    """A tiny checker whose thresholds are shifted by the median max concept score of _nsfw_images(),
    so that about half of those images are flagged."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from mapo_bench.evaluators.tiny import build_tiny_safety_checker

    folder = build_tiny_safety_checker(tmp_path_factory.mktemp("nsfw") / "checker")
    checker = StableDiffusionSafetyChecker.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(_pixels(_nsfw_images()))[1])
        cos = torch.stack([_cos(embeds, c.expand_as(embeds)) for c in checker.concept_embeds], dim=1)
        shift = (cos - checker.concept_embeds_weights).max(dim=1).values.median()
        checker.concept_embeds_weights += shift
        checker.special_care_embeds_weights += shift
    checker.save_pretrained(folder)
    return folder


def test_clip_score_is_100_cos(tiny_clip):
    """clip = 100 * cos(image, caption) per image (torchmetrics convention)."""
    from mapo_bench.evaluators.clip_score import ClipScore

    images = _images(4)
    _, image, text = _clip_embeds(tiny_clip, images, PROMPTS)
    expected = (100.0 * _cos(image, text)).double().numpy()
    got = ClipScore.load(model=str(tiny_clip)).score(images, PROMPTS)
    assert got.dtype == np.float64 and got.shape == (4,)
    # float32 cosines agree to ~1e-7 between batch shapes; times 100 that is ~1e-5, so allow 1e-4
    np.testing.assert_allclose(got, expected, atol=100 * 1e-6, rtol=0)


def test_pickscore_is_scaled_cos(tiny_clip):
    """pickscore = exp(logit_scale) * cos(image, caption); tiny CLIP's logit_scale is log(1/0.07)."""
    from mapo_bench.evaluators.pickscore import PickScore

    images = _images(4, seed=1)
    model, image, text = _clip_embeds(tiny_clip, images, PROMPTS)
    expected = (model.logit_scale.exp() * _cos(image, text)).detach().double().numpy()
    assert abs(float(model.logit_scale.detach().exp()) - 1 / 0.07) < 1e-3  # the scale really is applied
    got = PickScore.load(model=str(tiny_clip), processor=str(tiny_clip)).score(images, PROMPTS)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_aesthetic_is_linear_mlp_on_normalized_embedding(tiny_clip, aesthetic_file):
    """aesthetic = W5(W4(W3(W2(W1 e/|e| + b1) + b2) + b3) + b4) + b5: five affine maps, no activation."""
    from mapo_bench.evaluators.aesthetic import Aesthetic

    images = _images(3, seed=2)
    _, image, _ = _clip_embeds(tiny_clip, images, PROMPTS[:3])
    state = torch.load(aesthetic_file, weights_only=True)
    x = image / image.norm(dim=-1, keepdim=True)
    for key in ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"):
        x = x @ state[f"{key}.weight"].T + state[f"{key}.bias"]
    got = Aesthetic.load(model=str(aesthetic_file), clip_model=str(tiny_clip)).score(images, PROMPTS[:3])
    np.testing.assert_allclose(got, x.reshape(-1).double().numpy(), atol=TOL, rtol=0)


def test_style_is_zero_shot_probability_of_target(tiny_clip):
    """style = exp(100 c_t) / (exp(100 c_t) + exp(100 c_b)) = sigmoid(100 (c_t - c_b))."""
    from mapo_bench.evaluators.style import StyleAdherence

    images = _images(4, seed=3)
    target, base = "a Disney style animated image", "a realistic photo"
    _, image, text = _clip_embeds(tiny_clip, images, [target, base])
    c_t = _cos(image, text[0:1].expand_as(image))
    c_b = _cos(image, text[1:2].expand_as(image))
    expected = torch.sigmoid(100.0 * (c_t - c_b)).double().numpy()
    ctx = ScoreContext(task="pick-style", target_style=target, base_style=base)
    got = StyleAdherence.load(model=str(tiny_clip)).score(images, PROMPTS, ctx)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert ((got >= 0) & (got <= 1)).all()
    with pytest.raises(MapoBenchError, match="target_style and base_style"):
        StyleAdherence.load(model=str(tiny_clip)).score(images, PROMPTS, None)


def test_hps_longest_side_pad_and_100_cos(hps_folder):
    """hps = 100 * cos on open_clip; a 48x30 image becomes 32x20 (longest side 32, bicubic), zero-padded
    6 rows above and below to 32x32 before CLIP normalisation."""
    import open_clip
    from PIL import Image

    from mapo_bench.evaluators.hps import HPS
    from mapo_bench.testing import tiny_open_clip_config

    images = _images(2, size=(48, 30), seed=4)
    prompts = PROMPTS[:2]
    for version, file in (("v2.1", "HPS_v2.1_compressed.pt"), ("v2.0", "HPS_v2_compressed.pt")):
        model = open_clip.CLIP(**tiny_open_clip_config())
        model.load_state_dict(torch.load(hps_folder / file, weights_only=True)["state_dict"])
        model.eval()
        padded = []
        for im in images:
            small = np.array(im.resize((32, 20), Image.BICUBIC))
            canvas = np.zeros((32, 32, 3), dtype=np.uint8)
            canvas[6:26] = small
            padded.append(Image.fromarray(canvas))
        with torch.no_grad():
            image = model.encode_image(_pixels(padded))
            text = model.encode_text(open_clip.tokenize(prompts))
        expected = (100.0 * _cos(image, text)).double().numpy()
        evaluator = HPS.load(model=str(hps_folder), version=version, arch=tiny_open_clip_config())
        assert evaluator.version == version
        np.testing.assert_allclose(evaluator.score(images, prompts), expected, atol=TOL, rtol=0)


def test_hps_rejects_unknown_version(hps_folder):
    from mapo_bench.evaluators.hps import HPS

    with pytest.raises(MapoBenchError, match="unknown version"):
        HPS.load(model=str(hps_folder), version="v3")


def test_nsfw_is_max_concept_score_with_special_care_adjustment(checker_folder):
    """nsfw = max_j(cos(e, c_j) - t_j) + 0.01 * [any_k cos(e, s_k) - u_k > 0]; flagged by the checker iff > 0."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from mapo_bench.evaluators.nsfw import NSFWScore

    images = _nsfw_images()
    checker = StableDiffusionSafetyChecker.from_pretrained(str(checker_folder)).eval()
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(_pixels(images))[1])
    expected = []
    for e in embeds.detach():
        special = [float(_cos(e, s)) - float(u) for s, u in zip(checker.special_care_embeds.detach(),
                                                                 checker.special_care_embeds_weights.detach(), strict=True)]
        adjust = 0.01 if any(v > 0 for v in special) else 0.0
        expected.append(max(float(_cos(e, c)) - float(t) + adjust
                            for c, t in zip(checker.concept_embeds.detach(), checker.concept_embeds_weights.detach(),
                                            strict=True)))
    got = NSFWScore.load(model=str(checker_folder)).score(images, ["a"] * len(images))
    np.testing.assert_allclose(got, np.array(expected), atol=TOL, rtol=0)
    assert NSFWScore.higher_is_better is False
    _, flagged = checker(_pixels(images), [np.zeros((2, 2, 3)) for _ in images])
    assert (got > 0).any() and (got < 0).any()  # both sides of the threshold are exercised
    clear = np.abs(got) > 2e-3  # the checker rounds its scores to 3 decimals
    assert np.array_equal(np.array(flagged)[clear], (got > 0)[clear])


def test_shared_embedding_computed_once_and_equal_to_separate(tiny_clip, aesthetic_file):
    """aesthetic, clip and style on one backbone: the vision tower sees each image once, and every score
    equals the score of that metric loaded alone (fresh backbone)."""
    from mapo_bench.evaluators.aesthetic import Aesthetic
    from mapo_bench.evaluators.clip_score import ClipScore
    from mapo_bench.evaluators.style import StyleAdherence

    images = _images(4, seed=6)
    ctx = ScoreContext(target_style="a cartoon", base_style="a photo")
    kinds = {"aesthetic": lambda: Aesthetic.load(model=str(aesthetic_file), clip_model=str(tiny_clip)),
             "clip": lambda: ClipScore.load(model=str(tiny_clip)),
             "style": lambda: StyleAdherence.load(model=str(tiny_clip))}
    shared = {name: make() for name, make in kinds.items()}
    assert len({id(e.backbone) for e in shared.values()}) == 1
    together = {name: e.score(images, PROMPTS, ctx) for name, e in shared.items()}
    assert next(iter(shared.values())).backbone.image_forwards == len(images)
    for name, make in kinds.items():
        backbones.clear()
        alone = make().score(images, PROMPTS, ctx)
        np.testing.assert_allclose(together[name], alone, atol=1e-6, rtol=0)


def test_features_accepts_tensor_and_output_object():
    """transformers < 5 returns a tensor, >= 5 an output object with pooler_output."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    x = torch.randn(2, 3)
    assert backbones.features(x) is x
    assert backbones.features(BaseModelOutputWithPooling(pooler_output=x)) is x


@pytest.mark.parametrize("metric", ["pickscore", "clip", "hps", "nsfw", "aesthetic", "imagereward"])
def test_missing_model_offline_is_one_line_naming_it(metric):
    from mapo_bench.registry import EVALUATORS

    with pytest.raises(ModelNotFoundError) as info:
        EVALUATORS.get(metric).load(model="nobody/missing-model")
    message = str(info.value)
    assert "nobody/missing-model" in message and "\n" not in message


def test_default_weights_offline_name_the_real_model():
    from mapo_bench.evaluators.hps import HPS
    from mapo_bench.evaluators.pickscore import PickScore

    with pytest.raises(ModelNotFoundError, match="yuvalkirstain/PickScore_v1"):
        PickScore.load()
    with pytest.raises(ModelNotFoundError, match="xswu/HPSv2"):
        HPS.load()
    from mapo_bench.evaluators.image_reward import ImageReward

    with pytest.raises(ModelNotFoundError, match="THUDM/ImageReward"):
        ImageReward.load()


def test_aesthetic_real_file_name_checks_sha256(tmp_path, aesthetic_file):
    from mapo_bench.evaluators.aesthetic import AESTHETIC_FILE, load_mlp

    fake = tmp_path / AESTHETIC_FILE
    fake.write_bytes(aesthetic_file.read_bytes())
    with pytest.raises(MapoBenchError, match="sha256"):
        load_mlp(fake)


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a checkpoint holding an arbitrary object does not load."""
    from mapo_bench.evaluators.hps import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": ScoreContext(task="x")}, path)
    with pytest.raises(MapoBenchError, match="cannot load"):
        load_checkpoint(path)


def test_unknown_option_is_an_error(tiny_clip):
    from mapo_bench.evaluators.clip_score import ClipScore

    with pytest.raises(MapoBenchError, match="unknown option"):
        ClipScore.load(model=str(tiny_clip), colour="red")


def test_model_root_supplies_default_weights(tiny_clip, tmp_path, monkeypatch):
    """$MAPO_BENCH_MODEL_ROOT/openai/clip-vit-large-patch14 is found for the default clip model."""
    import shutil

    from mapo_bench.evaluators.clip_score import ClipScore

    shutil.copytree(tiny_clip, tmp_path / "openai" / "clip-vit-large-patch14")
    monkeypatch.setenv("MAPO_BENCH_MODEL_ROOT", str(tmp_path))
    assert ClipScore.load().score(_images(1), PROMPTS[:1]).shape == (1,)


def test_hub_fetch_asks_only_for_needed_files(tmp_path, monkeypatch):
    """From the hub, a model folder is fetched file by file: config, the first weight file that exists,
    optional processor files; never a whole snapshot (which for openai/clip-vit-large-patch14 also holds
    TF and Flax weights)."""
    from mapo_bench.evaluators import backbones as bb

    asked = []
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    present = {"config.json", "pytorch_model.bin", "preprocessor_config.json"}

    def fake_resolve(model_id, allow_hub=True, filename=None):
        if not allow_hub or filename is None:
            raise ModelNotFoundError(f"model {model_id!r} is not available")
        asked.append(filename)
        if filename not in present:
            raise ModelNotFoundError(f"model {model_id!r}: no {filename}")
        return snapshot / filename

    monkeypatch.setattr(bb, "resolve_model", fake_resolve)
    folder = bb.resolve_folder("org/model", bb.CONFIG_FILES, either=bb.WEIGHT_FILES, optional=bb.PROCESSOR_FILES[:2])
    assert folder == snapshot
    assert asked == ["config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "preprocessor_config.json", "processor_config.json"]
    # sharded weights: the index, then each shard it names
    import json

    present.add("model.safetensors.index.json")
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    present.update({"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
    asked.clear()
    bb.resolve_folder("org/model", bb.CONFIG_FILES, either=bb.WEIGHT_FILES)
    assert asked == ["config.json", "model.safetensors", "model.safetensors.index.json",
                     "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    present.discard("model.safetensors.index.json")
    with pytest.raises(ModelNotFoundError, match="none of"):
        present.discard("pytorch_model.bin")
        bb.resolve_folder("org/model", bb.CONFIG_FILES, either=bb.WEIGHT_FILES)
