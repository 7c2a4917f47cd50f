"""build-dataset on tiny SDXL / SD1.5 pipelines and the toy renderer: layout, prompts, determinism, resume."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo_bench.config import validate
from mapo_bench.data.builder import build_dataset, pair_draws
from mapo_bench.data.config import BuildConfig
from mapo_bench.data.validate import validate_dataset
from mapo_bench.errors import MapoBenchError

SAMPLER = {"steps": 2, "guidance": 5.0, "height": 64, "width": 64}


def make_cfg(model, out, **kw) -> BuildConfig:
    base = {"model": str(model), "sampler": SAMPLER, "num_prompts": 3, "batch_size": 2, "shard_size": 2,
            "out": str(out)}
    return validate(BuildConfig, {**base, **kw})


def build(model, out, **kw) -> Path:
    return build_dataset(make_cfg(model, out, **kw))


def rows(folder: Path) -> list[dict]:
    return [r for shard in sorted((folder / "data").glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").glob("*.parquet"))}


def chosen_rejected(row: dict) -> tuple[str, str]:
    """(chosen prompt, rejected prompt) of a row, read through its labels."""
    return (row["prompt_0"], row["prompt_1"]) if row["label_0"] == 1.0 else (row["prompt_1"], row["prompt_0"])


def test_pick_style_sdxl_folder_layout_loads_and_records(tiny_sdxl, tmp_path):
    import datasets

    folder = build(tiny_sdxl, tmp_path / "ds", pairs_per_prompt=2, shard_size=4)
    got = rows(folder)
    assert len(got) == 6 and sorted(p.name for p in (folder / "data").iterdir()) == [
        "train-00000.parquet", "train-00001.parquet"]
    assert not (folder / ".partial").exists()
    assert datasets.load_dataset(str(folder), split="train").num_rows == 6
    assert datasets.load_dataset("parquet", data_dir=str(folder / "data"), split="train").num_rows == 6
    schema = pq.read_schema(folder / "data" / "train-00000.parquet")
    assert str(schema.field("label_0").type) == "double" and str(schema.field("jpg_0").type) == "binary"
    for row in got:
        chosen, rejected = chosen_rejected(row)
        assert chosen == f"Disney style animated image. {row['caption']}"
        assert rejected == f"Realistic 8k image. {row['caption']}"
        assert {row["label_0"], row["label_1"]} == {0.0, 1.0}
        assert row["task"] == "pick-style/cartoon" and row["model_id"] == str(tiny_sdxl)
        assert json.loads(row["sampler"])["steps"] == 2
        prompt_id, k = divmod(row["pair_id"], 2)
        seed, swap = pair_draws(0, prompt_id, k)
        assert row["seed"] == seed and (row["label_0"] == 0.0) == swap
        for column in ("jpg_0", "jpg_1"):
            image = Image.open(io.BytesIO(row[column]))
            assert image.format == "PNG" and image.size == (64, 64)
    assert len({r["pair_id"] for r in got}) == 6 and len({r["seed"] for r in got}) == 6
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] == 6 and manifest["counts"]["prompts"] == 3 and manifest["counts"]["shards"] == 2
    assert manifest["counts"]["chosen_in_jpg_0"] == sum(r["label_0"] == 1.0 for r in got)
    assert manifest["score_context"]["target_style"] == "a Disney style animated image"
    card = (folder / "README.md").read_text()
    assert "num_examples: 6" in card and "license: openrail++" in card and "Content warning" not in card
    report = validate_dataset(folder)
    assert report["errors"] == [] and report["rows"] == 6


@pytest.mark.parametrize("backend_fixture, kw, chosen_prefix, rejected_prefix", [
    ("tiny_sdxl", {"split": "pixel-art", "rejected_variant": "plain"}, "Pixel art style image. ", ""),
    ("tiny_sdxl", {"task": "pick-safety"}, "", "Sexual, nudity, +19 image. "),
    ("tiny_sdxl", {"task": "custom", "chosen_prefix": "Watercolor.", "rejected_prefix": "Photo."}, "Watercolor. ", "Photo. "),
    ("tiny_sd15", {"backend": "sd15", "split": "cartoon"}, "Disney style animated image. ", "Realistic 8k image. "),
    ("tiny_sd15", {"backend": "sd15", "task": "custom", "chosen_prefix": "Oil painting of "}, "Oil painting of ", ""),
])
def test_task_variants_record_their_prefixes(request, tmp_path, backend_fixture, kw, chosen_prefix, rejected_prefix):
    model = request.getfixturevalue(backend_fixture)
    folder = build(model, tmp_path / "ds", num_prompts=2, **kw)
    got = rows(folder)
    assert len(got) == 2
    for row in got:
        assert chosen_rejected(row) == (chosen_prefix + row["caption"], rejected_prefix + row["caption"])
    assert validate_dataset(folder)["errors"] == []


def test_pick_safety_sd15_shares_noise_warns_and_records_checker(tiny_sd15, tmp_path, monkeypatch, capfd):
    from mapo_bench.backends.sd15 import SD15Backend

    calls = []
    original = SD15Backend.generate

    def spy(self, prompts, seeds, sampler):
        calls.append((list(prompts), list(seeds)))
        return original(self, prompts, seeds, sampler)

    monkeypatch.setattr(SD15Backend, "generate", spy)
    folder = build(tiny_sd15, tmp_path / "ds", task="pick-safety", backend="sd15", num_prompts=3, batch_size=2)
    assert "content warning" in capfd.readouterr().err
    assert [len(p) for p, _ in calls] == [4, 2]  # shard 0: one batch of 2 pairs; shard 1: one pair
    for prompts, seeds in calls:
        n = len(prompts) // 2
        assert seeds[:n] == seeds[n:]  # chosen and rejected of a pair start from the same noise
        assert all(r == "Sexual, nudity, +19 image. " + c for c, r in zip(prompts[:n], prompts[n:], strict=True))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backend"]["safety_checker"] == "disabled"
    card = (folder / "README.md").read_text()
    assert "not-for-all-audiences" in card and "Content warning" in card and "safety checker was disabled" in card
    assert "license: creativeml-openrail-m" in card


def test_same_seed_same_bytes_and_pair_seeds_do_not_depend_on_the_run(tiny_sdxl, tmp_path):
    a = build(tiny_sdxl, tmp_path / "a", num_prompts=4, shard_size=3)
    b = build(tiny_sdxl, tmp_path / "b", num_prompts=4, shard_size=3)
    assert shard_bytes(a) == shard_bytes(b)
    # fewer prompts, other batching: the shared pairs keep their seed, side and prompts (no running generator)
    c = build(tiny_sdxl, tmp_path / "c", num_prompts=2, batch_size=1, shard_size=5)
    by_id = {r["pair_id"]: r for r in rows(a)}
    keys = ("caption", "seed", "prompt_0", "prompt_1", "label_0")
    for row in rows(c):
        assert {k: row[k] for k in keys} == {k: by_id[row["pair_id"]][k] for k in keys}
    d = build(tiny_sdxl, tmp_path / "d", num_prompts=4, shard_size=3, seed=1)
    assert shard_bytes(d) != shard_bytes(a)


def test_interrupted_build_resumes_to_identical_bytes(tiny_sdxl, tmp_path, monkeypatch):
    from mapo_bench.backends.sdxl import SDXLBackend

    kw = {"num_prompts": 5, "shard_size": 4, "batch_size": 2}  # shards [4, 1] -> batches [2, 2], [1]
    reference = build(tiny_sdxl, tmp_path / "ref", **kw)
    original = SDXLBackend.generate
    budget = {"left": 0, "calls": 0}

    def flaky(self, prompts, seeds, sampler):
        budget["calls"] += 1
        if budget["left"] == 0:
            raise RuntimeError("killed")
        budget["left"] -= 1
        return original(self, prompts, seeds, sampler)

    monkeypatch.setattr(SDXLBackend, "generate", flaky)
    out = tmp_path / "resumed"
    for allowed in (1, 1):  # dies inside shard 0 (after its first batch), then inside shard 1
        budget["left"] = allowed
        with pytest.raises(RuntimeError, match="killed"):
            build(tiny_sdxl, out, **kw)
        assert not (out / "manifest.json").exists() and not (out / "README.md").exists()
    assert (out / "data" / "train-00000.parquet").is_file() and not (out / "data" / "train-00001.parquet").exists()
    budget.update(left=99, calls=0)
    build(tiny_sdxl, out, **kw)
    assert budget["calls"] == 1  # only the missing batch was generated
    assert shard_bytes(out) == shard_bytes(reference)
    assert json.loads((out / "manifest.json").read_text())["counts"]["pairs"] == 5
    assert not (out / ".partial").exists()


def test_complete_folder_is_skipped_mismatch_is_an_error_overwrite_restarts(tiny_sdxl, tmp_path, monkeypatch):
    from mapo_bench.backends.sdxl import SDXLBackend

    out = build(tiny_sdxl, tmp_path / "ds", num_prompts=2)
    before = shard_bytes(out)
    original = SDXLBackend.generate

    def forbidden(self, *args):
        raise AssertionError("a complete build must not generate again")

    monkeypatch.setattr(SDXLBackend, "generate", forbidden)
    (out / "README.md").unlink()  # killed between manifest and card: the card is rendered again
    assert build(tiny_sdxl, out, num_prompts=2) == out and (out / "README.md").is_file()
    with pytest.raises(MapoBenchError, match=r"differs in: seed.*--overwrite"):
        build(tiny_sdxl, out, num_prompts=2, seed=5)
    monkeypatch.setattr(SDXLBackend, "generate", original)
    build(tiny_sdxl, out, num_prompts=2, seed=5, overwrite=True)
    assert shard_bytes(out) != before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(MapoBenchError, match="refusing to delete"):
        build(tiny_sdxl, stranger, overwrite=True)
    with pytest.raises(MapoBenchError, match="exists"):
        build(tiny_sdxl, stranger)
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_missing_model_is_one_line_and_leaves_nothing_in_the_way(tiny_sdxl, tmp_path):
    from mapo_bench.errors import ModelNotFoundError

    out = tmp_path / "ds"
    with pytest.raises(ModelNotFoundError) as info:
        build(tmp_path / "no-such-model", out, num_prompts=2)
    assert "no-such-model" in str(info.value) and "\n" not in str(info.value)
    build(tiny_sdxl, out, num_prompts=2)  # the corrected command needs no --overwrite
    assert len(rows(out)) == 2


def test_jpeg_on_request(tiny_sd15, tmp_path):
    folder = build(tiny_sd15, tmp_path / "ds", backend="sd15", num_prompts=2, image_format="jpeg")
    for row in rows(folder):
        assert Image.open(io.BytesIO(row["jpg_0"])).format == "JPEG"


def test_rendered_toy_pairs(tmp_path):
    from mapo_bench.toy.render import render_caption
    from mapo_bench.toy.vocab import parse_caption

    cfg = validate(BuildConfig, {"backend": "toy", "pairs": "rendered", "split": "cartoon", "severity": 0.5,
                                 "num_prompts": 6, "batch_size": 4, "shard_size": 4, "out": str(tmp_path / "toy")})
    folder = build_dataset(cfg)
    got = rows(folder)
    assert len(got) == 6
    for row in got:
        chosen, rejected = chosen_rejected(row)
        assert parse_caption(chosen).style == "cartoon" and parse_caption(chosen).alpha == 0.5
        assert parse_caption(rejected).style == "photo" and parse_caption(chosen).plain == row["caption"]
        side = "jpg_0" if row["label_0"] == 1.0 else "jpg_1"
        expected = io.BytesIO()
        render_caption(chosen, row["seed"]).convert("RGB").save(expected, format="PNG")
        assert row[side] == expected.getvalue()
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0" in card and "num_examples: 6" in card
    safety = build_dataset(validate(BuildConfig, {"backend": "toy", "pairs": "rendered", "task": "pick-safety",
                                                  "num_prompts": 3, "out": str(tmp_path / "safety")}))
    for row in rows(safety):
        chosen, rejected = chosen_rejected(row)
        assert not parse_caption(chosen).unsafe and parse_caption(rejected).unsafe
    assert validate_dataset(safety)["errors"] == []


def test_toy_backend_build(tmp_path):
    pytest.importorskip("mapo_bench.backends.toy", reason="the toy backend (issue 6) is not written yet")
    tiny = pytest.importorskip("mapo_bench.toy.tiny", reason="the tiny toy base builder is not written yet")
    from mapo_bench.toy.vocab import parse_caption

    base = tiny.build_tiny_toy(tmp_path / "toybase")
    cfg = validate(BuildConfig, {"backend": "toy", "model": str(base), "split": "pixel-art", "severity": 0.75,
                                 "num_prompts": 4, "batch_size": 4, "sampler": {"steps": 2, "guidance": 2.0},
                                 "out": str(tmp_path / "toy")})
    folder = build_dataset(cfg)
    got = rows(folder)
    assert len(got) == 4
    for row in got:
        chosen, rejected = chosen_rejected(row)
        assert chosen == f"pixel style 0.75: {row['caption']}" and rejected == f"photo style: {row['caption']}"
        assert parse_caption(chosen).plain == row["caption"]
        assert Image.open(io.BytesIO(row["jpg_0"])).size == (32, 32)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backend"]["backend"] == "toy" and manifest["backend"]["gate"] == "ungated"
    card = (folder / "README.md").read_text()
    assert f"toy base `{base}` is **ungated** (gate ungated: not measured)" in card
    assert manifest["score_context"]["target_style"] == "pixel"
    assert validate_dataset(folder)["errors"] == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MAPO_BENCH_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mapo_bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_bad_prompt_source_is_one_line(tmp_path):
    result = _cli("build-dataset", "pick-style", "--prompts", "nope.txt", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.txt" in lines[0]
    assert not (tmp_path / "x").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tiny_sdxl, tmp_path):
    """torchrun, two CPU processes (DESIGN.md 7: `accelerate launch --cpu --num_processes 2` starts one)."""
    kw = {"num_prompts": 5, "shard_size": 2, "batch_size": 2}
    one = build(tiny_sdxl, tmp_path / "one", **kw)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MAPO_BENCH_THREADS": "1"}
    overrides = [f"model={tiny_sdxl}", "num_prompts=5", "shard_size=2", "batch_size=2"] + [
        f"sampler.{k}={v}" for k, v in SAMPLER.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "mapo_bench", "build-dataset", "pick-style", *overrides, "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    two = tmp_path / "two"
    assert shard_bytes(two) == shard_bytes(one) and len(shard_bytes(one)) == 3
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["counts"]["processes"] == 2 and manifest["counts"]["pairs"] == 5
    assert (two / "README.md").read_text() == (one / "README.md").read_text()


@pytest.mark.slow
def test_sigkilled_cli_build_resumes_to_identical_bytes(tiny_sdxl, tmp_path):
    """A real kill -9 of `mapo-bench build-dataset` once it has written its first batch, then a restart."""
    import signal
    import time

    kw = {"num_prompts": 8, "batch_size": 1, "shard_size": 3, "sampler": {**SAMPLER, "steps": 10}}
    reference = build(tiny_sdxl, tmp_path / "ref", **kw)
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MAPO_BENCH_THREADS": "1"}
    args = [f"model={tiny_sdxl}", "num_prompts=8", "batch_size=1", "shard_size=3"] + [
        f"sampler.{k}={v}" for k, v in {**SAMPLER, "steps": 10}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "mapo_bench", "build-dataset", "pick-style", *args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob(".partial/*/batch-*.parquet"))) + len(list(out.glob("data/*.parquet"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    build(tiny_sdxl, out, **kw)
    assert shard_bytes(out) == shard_bytes(reference)
