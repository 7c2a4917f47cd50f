"""`mapo-bench sample` on tiny pipelines: layout, determinism, resume, unet / lora swaps, resume guard."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mapo_bench.config import SamplerConfig
from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.config import SampleConfig
from mapo_bench.sampling import INDEX, image_file, sample

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
STEPS2 = SamplerConfig(steps=2, guidance=5.0)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _cfg(model, prompt_file, out, backend="sd15", **kw) -> SampleConfig:
    return SampleConfig(model=str(model), backend=backend, prompts=str(prompt_file), seeds=kw.pop("seeds", [0, 1]),
                        sampler=STEPS2, batch_size=kw.pop("batch_size", 4), out=out, device="cpu", **kw)


def test_sample_layout_index_and_manifest(tiny_sd15, prompt_file, tmp_path):
    out = sample(_cfg(tiny_sd15, prompt_file, tmp_path / "s", model_name="base"))
    index = pd.read_parquet(out / INDEX)
    assert list(index.columns) == ["prompt_id", "prompt", "seed", "model", "file"]
    assert len(index) == 6 and set(index["model"]) == {"base"}
    assert index["prompt"].tolist()[::2] == PROMPTS
    for file in index["file"]:
        assert (out / file).is_file()
    from PIL import Image

    with Image.open(out / index["file"][0]) as im:
        assert im.size == (64, 64) and im.format == "PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 6 and manifest["sampler"]["steps"] == 2
    assert manifest["model"]["backend"] == "sd15"


def test_resume_regenerates_only_missing_images_identically(tiny_sd15, prompt_file, tmp_path):
    """Delete one image and the manifest (a crash before the end): the rerun makes exactly that image,
    identical up to one uint8 level (noise depends on the prompt and seed alone; the batch shape
    changes float rounding only)."""
    cfg = _cfg(tiny_sd15, prompt_file, tmp_path / "s")
    out = sample(cfg)
    victim = out / image_file(1, 1)
    original = victim.read_bytes()
    victim.unlink()
    (out / "manifest.json").unlink()
    sample(cfg.model_copy(update={"batch_size": 1}))
    # batched float kernels differ in the last bits from one batch shape to another: a uint8 level at most
    diff = np.abs(_pixels(victim.read_bytes()) - _pixels(original))
    assert diff.max() <= 1, diff.max()
    assert json.loads((out / "manifest.json").read_text())["counts"]["generated_by_main"] == 1
    # a finished folder is returned untouched
    stamp = (out / "manifest.json").stat().st_mtime_ns
    sample(cfg)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_more_seeds_reuse_existing_images(tiny_sd15, prompt_file, tmp_path):
    out = sample(_cfg(tiny_sd15, prompt_file, tmp_path / "s", seeds=[0]))
    sample(_cfg(tiny_sd15, prompt_file, tmp_path / "s", seeds=[0, 1]))
    assert json.loads((out / "manifest.json").read_text())["counts"]["generated_by_main"] == 3
    assert len(pd.read_parquet(out / INDEX)) == 6


def test_folder_of_another_sampler_is_refused(tiny_sd15, prompt_file, tmp_path):
    sample(_cfg(tiny_sd15, prompt_file, tmp_path / "s", seeds=[0]))
    other = _cfg(tiny_sd15, prompt_file, tmp_path / "s", seeds=[0]).model_copy(
        update={"sampler": SamplerConfig(steps=3, guidance=5.0)})
    with pytest.raises(MapoBenchError, match="overwrite"):
        sample(other)
    sample(other.model_copy(update={"overwrite": True}))
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["sampler"]["steps"] == 3


def test_unet_swap_changes_images(tiny_sd15, prompt_file, tmp_path):
    """A UNet folder from another seed replaces the pipeline's UNet; the model name comes from the folder."""
    from mapo_bench.testing import build_tiny_sd15

    other = build_tiny_sd15(tmp_path / "other", seed=1)
    base = sample(_cfg(tiny_sd15, prompt_file, tmp_path / "base", seeds=[0], num_prompts=1))
    tuned = sample(_cfg(tiny_sd15, prompt_file, tmp_path / "tuned", seeds=[0], num_prompts=1,
                        unet=other / "unet"))
    file = pd.read_parquet(base / INDEX)["file"][0]
    assert (base / file).read_bytes() != (tuned / file).read_bytes()
    assert pd.read_parquet(tuned / INDEX)["model"][0] == "other"


def test_lora_weights_change_images(tiny_sd15, prompt_file, tmp_path):
    """A non-zero LoRA saved in diffusers format loads through pipe.load_lora_weights."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "mylora", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    base = sample(_cfg(tiny_sd15, prompt_file, tmp_path / "base", seeds=[0], num_prompts=1))
    lora = sample(_cfg(tiny_sd15, prompt_file, tmp_path / "lora", seeds=[0], num_prompts=1, lora=tmp_path / "mylora"))
    file = pd.read_parquet(base / INDEX)["file"][0]
    assert (base / file).read_bytes() != (lora / file).read_bytes()
    assert pd.read_parquet(lora / INDEX)["model"][0] == "mylora"


def test_sdxl_sample(tiny_sdxl, prompt_file, tmp_path):
    out = sample(_cfg(tiny_sdxl, prompt_file, tmp_path / "x", backend="sdxl", seeds=[3], num_prompts=2))
    index = pd.read_parquet(out / INDEX)
    assert len(index) == 2 and all((out / f).is_file() for f in index["file"])


def test_a_released_unet_loads_by_hub_id(tiny_sdxl, prompt_file, tmp_path, monkeypatch):
    """MaPO's releases (``mapo-t2i/mapo-beta``, ...) are UNet-only repositories: ``unet=<hub id>`` resolves like
    every model id (here a copy under ``$MAPO_BENCH_MODEL_ROOT``) and draws what the same UNet as a local folder
    draws; offline without a copy it is one line naming the id and where to put it."""
    import shutil

    from mapo_bench.models import MODEL_ROOT_VAR
    from mapo_bench.testing import build_tiny_sdxl

    other = build_tiny_sdxl(tmp_path / "other", seed=1)
    root = tmp_path / "hub"
    shutil.copytree(other / "unet", root / "mapo-t2i" / "mapo-beta")  # config.json and weights at the top
    local = sample(_cfg(tiny_sdxl, prompt_file, tmp_path / "local", backend="sdxl", seeds=[0], num_prompts=1,
                        unet=str(other / "unet")))
    with pytest.raises(MapoBenchError, match=rf"'mapo-t2i/mapo-beta' is not available .*{MODEL_ROOT_VAR}"):
        sample(_cfg(tiny_sdxl, prompt_file, tmp_path / "missing", backend="sdxl", seeds=[0], num_prompts=1,
                    unet="mapo-t2i/mapo-beta"))
    monkeypatch.setenv(MODEL_ROOT_VAR, str(root))
    released = sample(_cfg(tiny_sdxl, prompt_file, tmp_path / "released", backend="sdxl", seeds=[0], num_prompts=1,
                           unet="mapo-t2i/mapo-beta"))
    base = sample(_cfg(tiny_sdxl, prompt_file, tmp_path / "base", backend="sdxl", seeds=[0], num_prompts=1))
    file = pd.read_parquet(local / INDEX)["file"][0]
    assert (released / file).read_bytes() == (local / file).read_bytes() != (base / file).read_bytes()
    assert pd.read_parquet(released / INDEX)["model"][0] == "mapo-beta"


def test_sample_config_validation():
    with pytest.raises(ValueError, match="at least one seed"):
        SampleConfig(seeds=[])
    with pytest.raises(ValueError, match="repeat"):
        SampleConfig(seeds=[1, 1])
    assert SampleConfig(unet="models/mapo/unet").derived_model_name() == "mapo"
    assert SampleConfig(model="stabilityai/stable-diffusion-xl-base-1.0").derived_model_name() == \
        "stable-diffusion-xl-base-1.0"


def test_toy_sample_and_toy_eval(tmp_path):
    """The toy backend samples through the same path (32 px), a fine-tuned toy UNet changes the images,
    and the toy evaluators score them as probabilities. Skipped while the toy backend is missing."""
    pytest.importorskip("mapo_bench.backends.toy", reason="toy backend (issue 6) not importable")
    tiny = pytest.importorskip("mapo_bench.toy.tiny", reason="toy tiny-model kit not importable")
    from mapo_bench.evaluators.config import EvalConfig
    from mapo_bench.evaluators.run import evaluate
    from mapo_bench.stats import compare_scores

    base = tiny.build_tiny_toy(tmp_path / "toybase", seed=0)
    other = tiny.build_tiny_toy(tmp_path / "other", seed=1)
    common = dict(model=str(base), backend="toy", prompts="toy:test", num_prompts=2, seeds=[0, 1],
                  sampler=SamplerConfig(steps=2, guidance=2.0), device="cpu")
    s_base = sample(SampleConfig(**common, out=tmp_path / "s-base", model_name="base"))
    s_tuned = sample(SampleConfig(**common, unet=other / "unet", out=tmp_path / "s-tuned"))
    index = pd.read_parquet(s_tuned / INDEX)
    assert len(index) == 4 and set(index["model"]) == {"other"}
    from PIL import Image

    with Image.open(s_base / index["file"][0]) as im:
        assert im.size == (32, 32)
    assert (s_base / index["file"][0]).read_bytes() != (s_tuned / index["file"][0]).read_bytes()
    out = evaluate(EvalConfig(metrics=["toy-style", "toy-content"], images=[s_base, s_tuned], out=tmp_path / "scores",
                              device="cpu", target_style="cartoon", base_style="photo",
                              models={"toy-style": str(base), "toy-content": str(base)}))
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 2 * 4 * 2 and scores["score"].between(0, 1).all()
    result = compare_scores(out, model_a="other", model_b="base", resamples=50)
    assert result["metrics"]["toy-style"]["n"] == 4


def test_foreign_folder_is_never_replaced(tiny_sd15, prompt_file, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(MapoBenchError, match="not a sample folder"):
        sample(_cfg(tiny_sd15, prompt_file, tmp_path / "mine", overwrite=True))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


class _RecordingBackend:
    """Stands in for a backend: records the prompts and noise seeds it is asked for."""

    name = "recording"
    default_sampler = STEPS2

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def generate(self, prompts, seeds, sampler):
        from PIL import Image

        self.calls += list(zip(prompts, seeds, strict=True))
        return [Image.new("RGB", (8, 8)) for _ in prompts]

    def record(self):
        return {"backend": self.name}


def test_each_image_gets_its_own_noise_from_prompt_and_seed(prompt_file, tmp_path, monkeypatch):
    """3 prompts x seeds {0, 1}: 6 distinct noise seeds (one seed shared by every prompt used to give all
    prompts the same noise); the same (prompt, seed) gets the same noise in any folder and with a prefix,
    and the index keeps the plain prompt, so the target images pair with every other model's."""
    import mapo_bench.sampling as sampling

    backend = _RecordingBackend()
    monkeypatch.setattr(sampling, "load_model", lambda cfg, device: backend)
    sample(_cfg("unused", prompt_file, tmp_path / "a"))
    assert len({s for _, s in backend.calls}) == 6 and {p for p, _ in backend.calls} == set(PROMPTS)
    assert [s for p, s in backend.calls if p == PROMPTS[0]] == [sampling.noise_seed(PROMPTS[0], 0),
                                                                  sampling.noise_seed(PROMPTS[0], 1)]
    backend.calls.clear()
    sample(_cfg("unused", prompt_file, tmp_path / "b", prompt_prefix="cartoon style:"))
    assert [p for p, _ in backend.calls][::2] == [f"cartoon style: {p}" for p in PROMPTS]
    assert [s for _, s in backend.calls] == [sampling.noise_seed(p, s) for p in PROMPTS for s in (0, 1)]
    assert pd.read_parquet(tmp_path / "b" / INDEX)["prompt"].tolist()[::2] == PROMPTS
    assert sampling.noise_seed("a", 0) != sampling.noise_seed("b", 0) != sampling.noise_seed("b", 1)
    assert 0 <= sampling.noise_seed("a", 0) < 2**31
