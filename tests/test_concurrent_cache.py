"""Two processes filling one latent / caption cache at once (issue 15): the cache stays consistent.

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
