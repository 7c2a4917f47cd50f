"""Config machinery, registries, model resolver, thread policy and the CLI's fast start."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pydantic import Field

from mapo_bench.config import (
    SamplerConfig,
    StrictModel,
    config_hash,
    load_config,
    parse_overrides,
    parse_value,
)
from mapo_bench.errors import MapoBenchError, ModelNotFoundError
from mapo_bench.models import MODEL_ROOT_VAR, resolve_model
from mapo_bench.registry import EVALUATORS, METHODS, TASKS


class Optim(StrictModel):
    lr: float = 1e-5
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])


class Demo(StrictModel):
    method: str = "mapo"
    steps: int = 10
    optim: Optim = Field(default_factory=Optim)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)


def test_parse_value_reads_yaml_scalars_and_exponent_floats():
    assert parse_value("1e-5") == 1e-5
    assert parse_value("3") == 3
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("mapo") == "mapo"


def test_overrides_nest_and_win_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: dpo\noptim:\n  lr: 0.001\n")
    cfg = load_config(Demo, path, ["optim.lr=2e-5", "steps=7"])
    assert (cfg.method, cfg.steps, cfg.optim.lr, cfg.optim.betas) == ("dpo", 7, 2e-5, [0.9, 0.999])
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(MapoBenchError) as info:
        load_config(Demo, path)
    message = str(info.value)
    assert str(path) in message and "optim.lrr" in message and "did you mean 'lr'" in message
    assert "\n" not in message


def test_wrong_type_and_bad_yaml_are_one_line(tmp_path):
    with pytest.raises(MapoBenchError, match="key 'steps'"):
        load_config(Demo, None, ["steps=many"])
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(MapoBenchError, match="not valid YAML"):
        load_config(Demo, path)
    with pytest.raises(MapoBenchError, match="not key.path=value"):
        load_config(Demo, None, ["steps"])


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(Demo()) == config_hash(Demo())
    assert config_hash(Demo()) != config_hash(Demo(steps=11))
    assert len(config_hash(Demo())) == 16


def test_registry_unknown_name_suggests_closest():
    with pytest.raises(MapoBenchError, match="did you mean 'pickscore'"):
        EVALUATORS.check("pickscor")
    assert METHODS.names() == ["dpo", "dreambooth", "mapo", "sft"]
    assert {
        "pick-style", "pick-safety", "custom", "from-images", "class-images", "scored-pairs", "pick-a-pic",
    } == set(TASKS.names())


def test_resolver_local_path_and_model_root(tmp_path, monkeypatch):
    assert resolve_model(str(tmp_path)) == tmp_path
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.setenv(MODEL_ROOT_VAR, str(tmp_path))
    assert resolve_model("org/model") == tmp_path / "org" / "model"


def test_resolver_missing_model_fails_fast_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ROOT_VAR, str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("stabilityai/stable-diffusion-xl-base-1.0")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "'stabilityai/stable-diffusion-xl-base-1.0'" in message
    assert str(tmp_path) in message and "--model" in message and "\n" not in message


def test_thread_policy_defaults_to_one(monkeypatch):
    from mapo_bench.threads import thread_count

    monkeypatch.delenv("MAPO_BENCH_THREADS", raising=False)
    assert thread_count() == 1
    monkeypatch.setenv("MAPO_BENCH_THREADS", "3")
    assert thread_count() == 3
    monkeypatch.setenv("MAPO_BENCH_THREADS", "x")
    with pytest.raises(MapoBenchError):
        thread_count()


def test_denormals_are_flushed_only_inside_the_training_block():
    """1e-39 is a float32 denormal: zero inside ``flush_denormals`` (where the CPU supports it), itself after."""
    import torch

    from mapo_bench.threads import flush_denormals

    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() > 0
    with flush_denormals() as enabled:
        inside = (tiny * 1.0).item()
    if not enabled:
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal returned False)")
    assert inside == 0.0
    assert (tiny * 1.0).item() > 0


def test_clip_tokenizer_matches_open_clip_ids():
    """Known CLIP ids: <|startoftext|> 49406, 'a' 320, 'photo' 1125, 'of' 539, 'cat' 2368, <|endoftext|> 49407."""
    from mapo_bench.clip_tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408


def test_help_does_not_import_torch_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); from mapo_bench.cli import app; "
            "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']); "
            "assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 1.5


def test_cli_ls_and_bad_input_exit_codes():
    from typer.testing import CliRunner

    from mapo_bench.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["ls", "evaluators"])
    assert listed.exit_code == 0 and "toy-style" in listed.output
    result = subprocess.run([sys.executable, "-m", "mapo_bench", "ls", "evaluatrs"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "did you mean 'evaluators'" in result.stderr and "Traceback" not in result.stderr


def test_every_command_has_an_example_in_help():
    from typer.testing import CliRunner

    from mapo_bench.cli import app

    runner = CliRunner()
    commands = ["build-dataset", "validate-dataset", "train", "sample", "eval", "compare", "mismatch", "run",
                "report", "ls", "env", "toy pretrain", "config validate", "config print", "cache ls", "cache clear"]
    for command in commands:
        result = runner.invoke(app, [*command.split(), "--help"])
        assert result.exit_code == 0, command
        assert "Example: mapo-bench" in result.output, command


def test_cli_build_dataset_flags_reach_the_config(tmp_path, tiny_sd15):
    """--pairs-per-prompt and the other build flags are overrides of BuildConfig keys."""
    import pandas as pd
    from typer.testing import CliRunner

    from mapo_bench.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\n")
    result = CliRunner().invoke(app, [
        "build-dataset", "pick-style", "--split", "pixel-art", "--backend", "sd15", "--model", str(tiny_sd15),
        "--prompts", str(prompts), "--pairs-per-prompt", "2", "--rejected-variant", "plain", "--batch-size", "4",
        "--out", str(tmp_path / "ds"), "sampler.steps=2"])
    assert result.exit_code == 0, result.output
    frame = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "ds" / "data").glob("*.parquet")))
    assert len(frame) == 4
    prompts_used = set(frame["prompt_0"]) | set(frame["prompt_1"])
    assert "Pixel art style image. a red apple" in prompts_used and "a red apple" in prompts_used


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    """typer turns Ctrl-C inside a command into a silent exit 130; main() names what is safe and how to
    go on (the same for a KeyboardInterrupt outside a command)."""
    from mapo_bench import cli

    for raised in (SystemExit(130), KeyboardInterrupt()):
        def interrupted(raised=raised):
            raise raised

        monkeypatch.setattr(cli, "app", interrupted)
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 130
        assert "interrupted; outputs written so far are complete" in capsys.readouterr().err


def test_a_hub_pipeline_downloads_only_its_components(monkeypatch, tmp_path):
    """From the hub, resolve_pipeline reads model_index.json first and then asks for its components' folders
    only (a FLUX repository's root-level 24 GB single-file checkpoint is never requested); a component the
    recipe drops (sd3 ``text_encoder_3: null``) is not fetched either. The hub is faked here."""
    import json

    import huggingface_hub

    from mapo_bench.models import resolve_pipeline

    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
                                 "text_encoder_2": ["transformers", "T5EncoderModel"], "vae": ["diffusers", "AutoencoderKL"],
                                 "image_encoder": [None, None]}))
    calls = {}
    monkeypatch.delenv(MODEL_ROOT_VAR, raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: str(index))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: calls.update(kw) or str(tmp_path))
    assert resolve_pipeline("black-forest-labs/FLUX.1-dev", ignore_patterns=["*.onnx"]) == tmp_path
    assert calls["allow_patterns"] == ["model_index.json", "text_encoder_2/*", "transformer/*", "vae/*"]
    assert calls["ignore_patterns"] == ["*.onnx"]
    resolve_pipeline("black-forest-labs/FLUX.1-dev", skip_components=("text_encoder_2",))
    assert calls["allow_patterns"] == ["model_index.json", "transformer/*", "vae/*"]
    # a local folder is used as it is, without any hub call
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub called"))
    assert resolve_pipeline(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("stage", ["train", "sample", "eval", "build-dataset"])
def test_a_second_writer_into_the_same_output_is_refused(tmp_path, stage):
    """While another process holds an output folder's lock, each stage refuses at once, in one line, and
    writes nothing; the lock is a hidden sibling (.<name>.lock), not a file inside the output."""
    from mapo_bench.io import hold_lock

    out = tmp_path / "out"
    args = {"train": ["train", "--method", "mapo", "--backend", "toy", "--dataset", str(tmp_path), "--out", str(out)],
            "sample": ["sample", "--backend", "toy", "--out", str(out)],
            "eval": ["eval", "--images", str(tmp_path), "--metrics", "toy-style", "--out", str(out)],
            "build-dataset": ["build-dataset", "pick-safety", "--backend", "toy", "--out", str(out)]}[stage]
    with hold_lock(tmp_path / ".out.lock"):
        result = subprocess.run([sys.executable, "-m", "mapo_bench", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{out}: another `mapo-bench {stage}` is writing this folder" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1 and not out.exists()
