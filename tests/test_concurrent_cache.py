"""Two processes filling one of mapo-bench's caches at once (issue 15): the cache stays consistent.

Latent / caption cache:

Shards are append-only files written under a unique name and renamed into place, and a reader keeps the
first copy of a row; so two trainers that start together may both encode a row, but every shard either
is complete or is not there, and every row reads the same as a cache one process built alone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import torch
from pairs_fixture import write_pairs

FILL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mapo_bench.backends import load_backend
    from mapo_bench.data.reader import open_pairs
    from mapo_bench.training.cache import LatentCache, cache_key, key_folder

    model, dataset, root, go = sys.argv[1:5]
    backend = load_backend("sdxl", model)
    source = open_pairs(dataset)
    key = cache_key(backend=backend, model=model, vae=None, dtype="float32", resolution=32, crop="center",
                    dataset_fingerprint=source.fingerprint, split="train")
    cache = LatentCache(key_folder(Path(root), key), key)
    while not Path(go).exists():  # both processes start encoding together
        time.sleep(0.01)
    print(cache.build_missing(backend, source, list(range(len(source.captions))), 32, 2, progress=False))
""")


def open_cache(root, model, dataset):
    from mapo_bench.backends import load_backend
    from mapo_bench.data.reader import open_pairs
    from mapo_bench.training.cache import LatentCache, cache_key, key_folder

    backend = load_backend("sdxl", str(model))
    source = open_pairs(dataset)
    key = cache_key(backend=backend, model=str(model), vae=None, dtype="float32", resolution=32, crop="center",
                    dataset_fingerprint=source.fingerprint, split="train")
    return LatentCache(key_folder(root, key), key), len(source.captions)


def fill(model, dataset, root, go, count):
    script = [sys.executable, "-c", FILL, str(model), str(dataset), str(root), str(go)]
    procs = [subprocess.Popen(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    time.sleep(0.5)
    go.write_text("go")
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
    return [int(out.strip().splitlines()[-1]) for out, _ in results]


def test_two_processes_filling_one_cache_agree_with_one_process(tmp_path, tiny_sdxl):
    dataset = write_pairs(tmp_path / "pairs", n=6)
    added = fill(tiny_sdxl, dataset, tmp_path / "shared", tmp_path / "go-shared", count=2)
    assert sum(added) >= 6  # every row encoded at least once; both may have encoded it
    fill(tiny_sdxl, dataset, tmp_path / "alone", tmp_path / "go-alone", count=1)

    shared, n = open_cache(tmp_path / "shared", tiny_sdxl, dataset)
    alone, _ = open_cache(tmp_path / "alone", tiny_sdxl, dataset)
    assert shared.missing(list(range(n))) == [] and alone.missing(list(range(n))) == []
    leftovers = [p.name for p in shared.folder.iterdir() if not p.name.startswith("shard-") and p.name != "key.json"]
    assert leftovers == []  # no half-written file beside the shards
    rows = [r for r in range(n) for _ in range(4)]
    images, flips = [0, 0, 1, 1] * n, [False, True] * (2 * n)
    for got, want in zip(shared.distribution(rows, images, flips), alone.distribution(rows, images, flips), strict=True):
        assert torch.equal(got, want)
    cond_shared, cond_alone = shared.conditioning(list(range(n))), alone.conditioning(list(range(n)))
    assert cond_shared.keys() == cond_alone.keys() and cond_shared
    assert all(torch.equal(cond_shared[k], cond_alone[k]) for k in cond_shared)
    # a row both processes encoded reads the same from either shard
    from safetensors import safe_open

    copies: dict[int, list[torch.Tensor]] = {}
    for path in sorted(shared.folder.glob("shard-*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for offset, row in enumerate(handle.get_tensor("rows").tolist()):
                copies.setdefault(row, []).append(handle.get_tensor("mean")[offset])
    assert all(torch.equal(c, cs[0]) for cs in copies.values() for c in cs)


def start_together(script: str, args: list[str], go, env: dict | None = None, count: int = 2) -> list[tuple[str, str]]:
    """Run ``count`` copies of ``script`` that wait for ``go`` to appear; (last stdout line, stderr) of each,
    after all succeed."""
    import os

    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, args), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
             for _ in range(count)]
    time.sleep(0.5)
    go.write_text("go")
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
    return [(out.strip().splitlines()[-1], err) for out, err in results]


TOKENIZER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.01)
    from mapo_bench.clip_tokenizer import load_clip_tokenizer
    print(load_clip_tokenizer()("a small red circle on the left")["input_ids"])
""")


def test_two_processes_building_the_tokenizer_cache_agree_with_one(tmp_path):
    """The CLIP tokenizer folder is built on first use: two first uses at once both load it, leave only its
    files, and the files equal one process's build byte for byte."""
    shared = start_together(TOKENIZER, [], tmp_path / "go", env={"MAPO_BENCH_CACHE": str(tmp_path / "shared")})
    alone = start_together(TOKENIZER, [], tmp_path / "go-alone", env={"MAPO_BENCH_CACHE": str(tmp_path / "alone")},
                           count=1)
    assert shared[0][0] == shared[1][0] == alone[0][0]
    files = sorted(p.name for p in (tmp_path / "shared" / "clip-tokenizer").iterdir())
    assert files == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    for name in files:
        assert (tmp_path / "shared" / "clip-tokenizer" / name).read_bytes() == \
            (tmp_path / "alone" / "clip-tokenizer" / name).read_bytes()


PRETRAIN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import mapo_bench.toy.gate as gate
    from mapo_bench.toy.config import ToyPretrainConfig
    from mapo_bench.toy.pretrain import pretrain
    from mapo_bench.toy.tiny import TINY_MODEL

    out, go = Path(sys.argv[1]), Path(sys.argv[2])
    captions = gate.gate_captions()[::12]
    gate.gate_captions = lambda: captions  # a few gate captions: the same code path, fast
    cfg = ToyPretrainConfig.model_validate({
        "out": str(out), "processes": 1, "steps": 3, "batch_size": 4, "checkpoint_every": 2, "model": TINY_MODEL,
        "data": {"pool_size": 24}, "evaluators": {"steps": 3, "pool_size": 24, "batch_size": 8, "width": 8},
        "gate": {"seeds_per_caption": 1, "enforce": False, "reason": "tiny test base"},
        "sampler": {"steps": 1, "guidance": 2.0}})
    while not go.exists():
        time.sleep(0.01)
    pretrain(cfg)
    print(json.loads((out / "manifest.json").read_text())["config_hash"])
""")


def test_two_processes_pretraining_one_toy_base_agree_with_one(tmp_path):
    """Two pretrains of one config into one folder (the toy-base cache) at once: the second waits for the
    first and takes its base; the folder's weights equal a base one process pretrained alone, and no work or
    temp folder is left."""
    from mapo_bench.integrity import file_records
    from mapo_bench.toy.shipped import base_files

    shared = start_together(PRETRAIN, [tmp_path / "shared" / "base"], tmp_path / "go")
    alone = start_together(PRETRAIN, [tmp_path / "alone" / "base"], tmp_path / "go-alone", count=1)
    assert shared[0][0] == shared[1][0] == alone[0][0]
    assert sum("another process is pretraining this toy base; waiting" in err for _, err in shared) == 1
    leftovers = sorted(p.name for p in (tmp_path / "shared").iterdir() if p.name not in ("base", ".base.lock"))
    assert leftovers == []

    def weights(folder):
        return {path: r["sha256"] for path, r in file_records(folder, base_files(folder)).items()
                if path.endswith(".safetensors")}

    assert weights(tmp_path / "shared" / "base") == weights(tmp_path / "alone" / "base") != {}
