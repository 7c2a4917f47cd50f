"""Closeness to the data: which of two models lands its mean preference score nearer the target's.

The preference advantage rewards moving further in the preferred direction however far the data asks to go:
on a blend whose chosen images are 10% cartoon, a model that turns 70% cartoon wins on toy-style although
the data never asked for it (docs/flow.md, toy-mismatch-flow at cartoon-0.1). The target (the base prompted
with the dataset's chosen prefix, sampled on the same test prompts and seeds) shows what the data asks for,
so beside the advantage each pair of trained methods gets

    closeness(A over B) = |gap_B| - |gap_A|,   gap_X = advantage of X over the target (metric units,
                                               positive: beyond the target in the preferred direction),

positive when A's mean lands nearer the target's. Its interval takes both gaps from the same two-way
resamples (:func:`mapo_bench.stats.compare` with shared draws), so the target's own noise, shared by both,
is resampled once. |mean| is biased away from 0 when a true gap is 0 (by about its standard error); the
bias is alike for both sides and mostly cancels in the difference. That is a one-number summary of the
preference metric: it tells overshoot from faithful learning on the axis the headline scores. The second part
of this module compares image distributions: the KID of each model's samples to the target's samples, with
the same two-way bootstrap (:func:`kid_to_target`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mapo_bench.stats import percentile

TARGET = "target"


def closeness(gap_a: float, gap_b: float, draws_a: np.ndarray, draws_b: np.ndarray, ci: float = 0.95) -> dict[str, Any]:
    """A's closeness to the target over B's: ``|gap_b| - |gap_a|`` with a percentile interval.

    ``gap_a``, ``gap_b``: A's and B's advantage over the target (scalars, metric units); ``draws_a``,
    ``draws_b``: their bootstrap values ``(R,)`` from the same resamples (index i of both from one draw of
    training seeds and prompts). Returns ``closeness``, ``closeness_ci_low/high`` and ``_draws`` ``(R,)``.
    """
    draws = np.abs(np.asarray(draws_b, dtype=np.float64)) - np.abs(np.asarray(draws_a, dtype=np.float64))
    low, high = percentile(draws, ci)
    return {"closeness": float(abs(gap_b) - abs(gap_a)), "closeness_ci_low": low, "closeness_ci_high": high,
            "_draws": draws}


def side_of_target(low: float, high: float) -> str:
    """Where a model's mean lies against the target's, from the interval of its advantage over the target."""
    return "beyond the target" if low > 0 else "short of the target" if high < 0 else "level with the target"


def attach_closeness(rows: list[dict[str, Any]], draws: dict[Any, dict[str, Any]], methods: list[str]) -> None:
    """Add closeness (and each side's gap to the target) to every preference row ``a vs b`` of two trained
    ``methods`` whose ``a vs target`` and ``b vs target`` rows were resampled with kept draws; the row's
    draws get a ``closeness`` entry, so a trend can be fitted to it like to the advantage."""
    index = {(r["split"], r["view"], r["dataset"], r["comparison"]): r for r in rows if r["role"] == "preference"}
    for key, row in index.items():
        a, _, b = row["comparison"].partition(" vs ")
        if a not in methods or b not in methods or key not in draws:
            continue
        to_target = [(*key[:3], f"{m} vs {TARGET}") for m in (a, b)]
        if not all(k in index and k in draws for k in to_target):
            continue
        (row_a, row_b), (draws_a, draws_b) = [index[k] for k in to_target], [draws[k]["advantage"] for k in to_target]
        result = closeness(row_a["advantage"], row_b["advantage"], draws_a, draws_b, ci=row["ci"])
        draws[key]["closeness"] = result.pop("_draws")
        row.update(result)
        for side, other in (("a", row_a), ("b", row_b)):
            row[f"target_gap_{side}"] = other["advantage"]
            row[f"target_gap_{side}_ci"] = [other["advantage_ci_low"], other["advantage_ci_high"]]
            row[f"target_side_{side}"] = side_of_target(other["advantage_ci_low"], other["advantage_ci_high"])


def overshoots(row: dict[str, Any]) -> str | None:
    """The method whose clear lead on the preference metric comes with landing clearly farther from the data
    than the other (the lead is then an overshoot, not better learning), or None."""
    if "closeness" not in row:
        return None
    a, _, b = row["comparison"].partition(" vs ")
    if row["advantage_ci_low"] > 0 and row["closeness_ci_high"] < 0:
        return a
    if row["advantage_ci_high"] < 0 and row["closeness_ci_low"] > 0:
        return b
    return None


# -- closeness of the image distribution: KID to the target's samples ------------------------------------
FEATURES_DIR = "features"  # <run>/features/<sample label>/<split>-<kind>.npz: cached per sample folder


def cluster_weights(draws: tuple[np.ndarray, np.ndarray], n_seeds: int, n_prompts: int,
                    with_seeds: bool) -> np.ndarray:
    """How often each (training seed, prompt) cell (``with_seeds``) or each prompt is drawn in every resample of
    :func:`mapo_bench.stats.bootstrap_draws`: ``(R, S * P)`` (cell s * P + p) or ``(R, P)``."""
    def counts(idx: np.ndarray, n: int) -> np.ndarray:  # per resample row, how often each index was drawn
        rows = np.arange(len(idx))[:, None] * n
        return np.bincount((rows + idx).ravel(), minlength=len(idx) * n).reshape(len(idx), n).astype(np.float64)

    seed_idx, prompt_idx = draws
    per_prompt = counts(prompt_idx, n_prompts)
    if not with_seeds:
        return per_prompt
    per_seed = counts(seed_idx, n_seeds)
    return (per_seed[:, :, None] * per_prompt[:, None, :]).reshape(len(seed_idx), n_seeds * n_prompts)


def kid_to_target(models: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]],
                  target: tuple[np.ndarray, np.ndarray], n_seeds: int, n_prompts: int,
                  draws: tuple[np.ndarray, np.ndarray], ci: float = 0.95) -> dict[str, dict[str, Any]]:
    """KID of each model's samples to the target's, with an interval from the two-way cluster bootstrap.

    ``models``: name -> (features (n, d), training-seed index (n,) or None for a model without training
    seeds such as the base, prompt index (n,)); ``target``: (features (m, d), prompt index (m,)). Indices
    are positions in the shared seed and prompt labels; ``draws`` are :func:`mapo_bench.stats.bootstrap_draws`
    of those axes, so every model (and the target, resampled with the same prompts) is drawn alike and the
    models' KIDs can be differenced per resample. Returns name -> ``kid``, ``ci_low``, ``ci_high``, ``_draws``.
    """
    from mapo_bench.severity_math import cluster_kernel_sums, weighted_kid

    target_features, target_prompts = target
    wt = cluster_weights(draws, n_seeds, n_prompts, with_seeds=False)
    out = {}
    for name, (features, seed_index, prompt_index) in models.items():
        with_seeds = seed_index is not None
        cells = np.asarray(seed_index) * n_prompts + np.asarray(prompt_index) if with_seeds else np.asarray(prompt_index)
        n_cells = n_seeds * n_prompts if with_seeds else n_prompts
        sums = cluster_kernel_sums(features, cells, n_cells, target_features, target_prompts, n_prompts)
        values = weighted_kid(sums, cluster_weights(draws, n_seeds, n_prompts, with_seeds), wt)
        low, high = percentile(values, ci)
        point = weighted_kid(sums, np.ones(n_cells), np.ones(n_prompts))  # every cell once: kid() of the samples
        out[name] = {"kid": float(point[0]), "ci_low": low, "ci_high": high, "_draws": values}
    return out


def kid_closeness(a: dict[str, Any], b: dict[str, Any], ci: float = 0.95) -> dict[str, Any]:
    """How much nearer A's samples are to the target's than B's: ``KID_B - KID_A`` (positive: A nearer), from
    two :func:`kid_to_target` results on the same draws."""
    draws = np.asarray(b["_draws"]) - np.asarray(a["_draws"])
    low, high = percentile(draws, ci)
    return {"kid_closeness": b["kid"] - a["kid"], "ci_low": low, "ci_high": high}


def sample_features(folder: Any, kind: str, model_id: str, cache: Any) -> tuple[np.ndarray, Any]:
    """Features of a sample folder's images (its ``index.parquet`` order) and that index, cached in ``cache``
    (an .npz written atomically, reused while the folder's index is unchanged)."""
    import hashlib
    import io
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    from mapo_bench.io import write_bytes_atomic
    from mapo_bench.mismatch import image_features

    folder, cache = Path(folder), Path(cache)
    index_bytes = (folder / "index.parquet").read_bytes()
    index = pd.read_parquet(io.BytesIO(index_bytes))
    key = hashlib.sha256(index_bytes + f"{kind}:{model_id}".encode()).hexdigest()
    if cache.is_file():
        with np.load(cache) as stored:
            if str(stored["key"]) == key:
                return stored["features"], index
    images = [Image.open(folder / name).convert("RGB") for name in index["file"]]
    features = image_features(images, kind, model_id)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), features=features)
    write_bytes_atomic(cache, buffer.getvalue())
    return features, index
