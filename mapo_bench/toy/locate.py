"""Where the object of a toy caption is in an image: the renderer's own geometry fitted to the pixels.

Why: a texture metric that reads the whole image counts a pattern drawn over the background as the subject
(toy-personalization, 2026-12-04: SFT's gain was diagonal stripes on the background). The caption fixes the
object's shape, side and size; the renderer jitters its centre and radius within known ranges
(``render.CENTRE_X`` ... ``render.JITTER_RADIUS``). Every placement on a half-pixel grid of those ranges is a
candidate (its anti-aliased coverage as soft weights); the one whose inside and outside colours differ most
(Otsu's between-class criterion: n_in * n_out * |mean_in - mean_out|^2 over RGB) is the object. It needs no
learned model and works in every style, since the object always differs from its background in colour or
brightness; measured on renders, the window sits within 1 px of the drawn object (1.4 px in the neon style,
whose glow spreads past the outline).
"""

from __future__ import annotations

import functools

import numpy as np

from mapo_bench.toy import render
from mapo_bench.toy.vocab import parse_caption

GRID_STEP = 0.5  # px: candidate centres and radii
INNER_MARGIN = 1.0  # px: the returned weights stop this far inside the outline, where the fill (and a pattern) is


@functools.cache
def candidate_masks(shape: str, position: str, size: str) -> tuple[np.ndarray, np.ndarray]:
    """``((K, 1024), (K, 1024))``: for every candidate placement, the object's coverage and its inner coverage
    (radius less ``INNER_MARGIN``), flattened over the 32 x 32 canvas."""
    xs = render.CENTRE_X[position] + np.arange(-render.JITTER_X, render.JITTER_X + 1e-9, GRID_STEP)
    ys = render.CENTRE_Y + np.arange(-render.JITTER_Y, render.JITTER_Y + 1e-9, GRID_STEP)
    rs = render.RADIUS[size] + np.arange(-render.JITTER_RADIUS, render.JITTER_RADIUS + 1e-9, GRID_STEP)
    placements = [(x, y, r) for x in xs for y in ys for r in rs]
    masks = np.stack([render.coverage(shape, x, y, r).reshape(-1) for x, y, r in placements])
    inner = np.stack([render.coverage(shape, x, y, r - INNER_MARGIN).reshape(-1) for x, y, r in placements])
    return masks, inner


def separation(masks: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """``(K, P)`` masks (weights in [0, 1]), ``(P, 3)`` pixels -> ``(K,)``: n_in * n_out * |mean_in - mean_out|^2
    with n_in the mask's total weight (Otsu's between-class variance times P^2); 0 for an empty or full mask."""
    n = masks.shape[1]
    n_in = masks.sum(axis=1)
    n_out = n - n_in
    inside = masks @ pixels
    mean_in = inside / np.maximum(n_in, 1)[:, None]
    mean_out = (pixels.sum(axis=0) - inside) / np.maximum(n_out, 1)[:, None]
    return n_in * n_out * ((mean_in - mean_out) ** 2).sum(axis=1)


def object_weights(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """``(N, 32, 32, 3)`` uint8 images and their toy captions -> ``(N, 32, 32)`` weights in [0, 1]: the inner
    coverage of each caption's object at the placement that fits its image best."""
    size = render.SIZE
    if images.shape[1:3] != (size, size):
        raise ValueError(f"toy images are {size} x {size} px, got {images.shape[1]} x {images.shape[2]}")
    weights = np.zeros(images.shape[:3])
    pixels = images.reshape(len(images), -1, 3).astype(np.float64) / 255.0
    for i, prompt in enumerate(prompts):
        caption = parse_caption(prompt)
        masks, inner = candidate_masks(caption.shape, caption.position, caption.size)
        weights[i] = inner[int(np.argmax(separation(masks, pixels[i])))].reshape(size, size)
    return weights
