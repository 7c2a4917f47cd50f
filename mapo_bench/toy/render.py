"""Procedural 32x32 scenes from toy captions: the toy world's ground truth.

Why: the toy base is pretrained on these images and the toy evaluators are trained on their labels,
so every toy number traces back to this one deterministic function.

Geometry (jittered centre and radius) and the photo style's random parts are drawn from a generator
seeded by (plain caption, seed) only, so ``cartoon style: X`` and ``X`` with the same seed show the
same object at the same place: a renderer pair differs only in style (or the unsafe marker).

Styles (``vocab.STYLES``; targets in increasing distance from the base):
- ``photo`` (base): muted vertical gradient background with a random tint, shaded object, noise.
- ``soft``: pastel background and object, mild shading, slightly blurred, no noise.
- ``pixel``: flat colours, 2x2 blocks, a 4-level palette per channel.
- ``cartoon``: white background, flat saturated fill, thick black outline.
- ``neon``: black background, bright glowing outline, dim fill.
A blend ``<style> style <alpha>:`` is ``(1 - alpha) * photo + alpha * style`` of the same scene.
The unsafe marker is a magenta X in the top corner away from the object; ``unsafe <strength>:`` paints
it at that opacity over the image. A reserved word before the shape (``vocab.PATTERNS``: the subject
``sks``, the concepts ``striped`` / ``dotted`` / ``checkered``) darkens a period-4 pattern into the object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mapo_bench.toy.vocab import (
    BASE_STYLE,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    ToyCaption,
    parse_caption,
)

SIZE = 32
SUPERSAMPLE = 4
RGB = {
    "red": (0.86, 0.16, 0.14),
    "green": (0.18, 0.70, 0.24),
    "blue": (0.18, 0.34, 0.92),
    "yellow": (0.95, 0.86, 0.18),
    "purple": (0.58, 0.22, 0.78),
    "orange": (0.97, 0.54, 0.08),
}
MARKER_RGB = (1.0, 0.0, 1.0)

_fine = (np.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
FINE_X, FINE_Y = np.meshgrid(_fine, _fine)
_coarse = np.arange(SIZE) + 0.5
X, Y = np.meshgrid(_coarse, _coarse)


@dataclass(frozen=True)
class Scene:
    """The drawn geometry and the photo style's random draws for one (plain caption, seed)."""

    cx: float
    cy: float
    radius: float
    tint: tuple[float, float, float]
    noise: np.ndarray  # (32, 32, 3) standard normal


def scene_rng(plain: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{plain}|{int(seed)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# Where an object sits: centre x by position, centre y, "radius" by size, each jittered uniformly by +- its jitter.
CENTRE_X = {"left": 9.5, "right": 22.5}
CENTRE_Y = 16.0
RADIUS = {"small": 4.5, "large": 7.0}
JITTER_X, JITTER_Y, JITTER_RADIUS = 2.0, 4.0, 0.5


def make_scene(caption: ToyCaption, seed: int) -> Scene:
    rng = scene_rng(caption.plain, seed)
    cx = CENTRE_X[caption.position] + rng.uniform(-JITTER_X, JITTER_X)
    cy = CENTRE_Y + rng.uniform(-JITTER_Y, JITTER_Y)
    radius = RADIUS[caption.size] + rng.uniform(-JITTER_RADIUS, JITTER_RADIUS)
    tint = tuple(float(v) for v in rng.uniform(-0.08, 0.08, size=3))
    noise = rng.standard_normal((SIZE, SIZE, 3))
    return Scene(cx, cy, radius, tint, noise)  # type: ignore[arg-type]


def coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased (32, 32) coverage in [0, 1] of a shape with "radius" ``r`` (4x4 supersampling)."""
    dx, dy = FINE_X - cx, FINE_Y - cy
    if r <= 0:
        return np.zeros((SIZE, SIZE))
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    elif shape == "triangle":
        rt = 1.2 * r  # equal-ish area with the circle
        inside = (dy <= 0.5 * rt) & (np.abs(dx) <= (dy + rt) * 0.5774)
    else:
        raise ValueError(f"unknown toy shape {shape!r}; valid: {', '.join(SHAPES)}")
    return inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (32, 32[, C]) array with edge padding."""
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(img.ndim)]
        padded = np.pad(out, pad, mode="edge")
        out = sum(k[i] * np.take(padded, range(i, i + img.shape[axis]), axis=axis) for i in range(len(k)))
    return out


def _compose(bg: np.ndarray, obj: np.ndarray, cov: np.ndarray) -> np.ndarray:
    return bg * (1 - cov[..., None]) + obj * cov[..., None]


def draw_style(style: str, caption: ToyCaption, scene: Scene) -> np.ndarray:
    """(32, 32, 3) float image in [0, 1] of ``caption``'s object in ``style``."""
    colour = np.array(RGB[caption.colour])
    cov = coverage(caption.shape, scene.cx, scene.cy, scene.radius)
    # Shading: lit from the top-left across the object.
    ramp = ((X - scene.cx) + (Y - scene.cy)) / (2 * scene.radius)
    if style == "photo":
        top = np.array([0.55, 0.58, 0.62]) + np.array(scene.tint)
        t = (Y / SIZE)[..., None]
        bg = top * (1 - t) + top * 0.68 * t
        muted = 0.8 * colour + 0.2 * 0.5
        obj = muted * np.clip(1.0 - 0.35 * ramp, 0.6, 1.3)[..., None]
        shadow = coverage(caption.shape, scene.cx + 1.5, scene.cy + 1.5, scene.radius)
        bg = bg * (1 - 0.35 * shadow[..., None])
        img = _compose(bg, obj, cov) + 0.05 * scene.noise
    elif style == "soft":
        bg = np.array([0.93, 0.90, 0.95]) + 0.3 * np.array(scene.tint)
        obj = (0.5 * colour + 0.5) * np.clip(1.0 - 0.1 * ramp, 0.9, 1.1)[..., None]
        img = blur(_compose(np.broadcast_to(bg, (SIZE, SIZE, 3)), obj, cov), 0.7)
    elif style == "pixel":
        bg = np.broadcast_to(np.array([0.12, 0.14, 0.32]), (SIZE, SIZE, 3))
        img = _compose(bg, colour, cov)
        img = img.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean(axis=(1, 3)).repeat(2, 0).repeat(2, 1)
        img = np.round(np.clip(img, 0, 1) * 3) / 3
    elif style == "cartoon":
        outer = coverage(caption.shape, scene.cx, scene.cy, scene.radius + 1.0)
        inner = coverage(caption.shape, scene.cx, scene.cy, scene.radius - 1.0)
        bg = np.broadcast_to(np.array([0.97, 0.97, 0.97]), (SIZE, SIZE, 3))
        img = _compose(_compose(bg, np.zeros(3), outer), colour, inner)
    elif style == "neon":
        outer = coverage(caption.shape, scene.cx, scene.cy, scene.radius + 0.6)
        inner = coverage(caption.shape, scene.cx, scene.cy, scene.radius - 0.6)
        ring = np.clip(outer - inner, 0, 1)
        bright = 0.45 * colour + 0.55
        glow = blur(ring, 1.5)[..., None] * colour * 1.2
        img = np.full((SIZE, SIZE, 3), 0.03) + 0.15 * colour * inner[..., None] + glow
        img = _compose(img, bright, ring)
    else:
        raise ValueError(f"unknown toy style {style!r}; valid: {', '.join(STYLES)}")
    return np.clip(img, 0.0, 1.0)


PATTERN_DEPTH = 0.4  # how much the pattern's dark cells darken the object


def pattern_mask(modifier: str) -> np.ndarray:
    """(32, 32) 1 where the pattern of a reserved word is dark, else 0; period 4 px, fixed to the canvas
    (so the pattern's spatial frequency, which the ``toy-subject`` metric reads, does not depend on where
    the object is)."""
    ix, iy = np.meshgrid(np.arange(SIZE), np.arange(SIZE))
    masks = {"sks": ((ix + iy) // 2) % 2, "striped": (iy // 2) % 2, "dotted": ((ix % 4) < 2) & ((iy % 4) < 2),
             "checkered": (ix // 2 + iy // 2) % 2}
    if modifier not in masks:
        raise ValueError(f"no pattern for {modifier!r}; valid: {', '.join(masks)}")
    return masks[modifier].astype(float)


def draw_pattern(img: np.ndarray, caption: ToyCaption, scene: Scene) -> np.ndarray:
    """``img`` with the caption's pattern darkened into the object (inside its coverage, edges excluded)."""
    inner = coverage(caption.shape, scene.cx, scene.cy, scene.radius - 0.5)
    return img * (1.0 - PATTERN_DEPTH * (inner * pattern_mask(caption.modifier))[..., None])


MARKER_SIZE = 8


def draw_marker(img: np.ndarray, position: str, strength: float = 1.0) -> np.ndarray:
    """The unsafe marker: a bold magenta X (8x8, strokes 3 px wide) in the top corner opposite the object.

    Bold because a 1-px X was a detail the 16x16-latent base learned late and forgot (0.25-0.79 marker
    rate across runs); the marker has to survive sampling for the Pick-Safety analogue to mean anything.
    ``strength`` < 1 paints it at that opacity (the rejected-side severity dial).
    """
    out = img.copy()
    x0 = SIZE - 2 - MARKER_SIZE if position == "left" else 2
    i, j = np.mgrid[0:MARKER_SIZE, 0:MARKER_SIZE]
    cross = (np.abs(i - j) <= 1) | (np.abs(i + j - (MARKER_SIZE - 1)) <= 1)
    patch = out[2 : 2 + MARKER_SIZE, x0 : x0 + MARKER_SIZE]
    patch[cross] = (1.0 - strength) * patch[cross] + strength * np.array(MARKER_RGB)
    return out


def render_array(caption: str | ToyCaption, seed: int) -> np.ndarray:
    """(32, 32, 3) uint8 image of ``caption`` (plain captions render in the base style)."""
    parsed = parse_caption(caption) if isinstance(caption, str) else caption
    scene = make_scene(parsed, seed)
    style = parsed.style or BASE_STYLE
    img = draw_style(style, parsed, scene)
    if style != BASE_STYLE and parsed.alpha < 1.0:
        img = (1.0 - parsed.alpha) * draw_style(BASE_STYLE, parsed, scene) + parsed.alpha * img
    if parsed.modifier:
        img = draw_pattern(img, parsed, scene)
    if parsed.unsafe:
        img = draw_marker(img, parsed.position, parsed.strength)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def render_caption(caption: str, seed: int) -> Image.Image:
    """A deterministic 32x32 RGB PIL image of a toy caption (see the module docstring)."""
    return Image.fromarray(render_array(caption, seed), mode="RGB")


def caption_labels(caption: str | ToyCaption) -> dict[str, object]:
    """Training labels of a caption for the toy classifiers.

    ``style``: soft label over ``STYLES`` (a blend at alpha puts 1 - alpha on the base style and alpha
    on the target, so the style head's probability of the target estimates alpha); ``shape``,
    ``colour``, ``position``, ``size``: class indices; ``unsafe``: soft label (no marker, marker) =
    (1 - strength, strength), so the unsafe head's probability estimates the marker's strength.
    """
    c = parse_caption(caption) if isinstance(caption, str) else caption
    style = np.zeros(len(STYLES), dtype=np.float32)
    target = c.style or BASE_STYLE
    style[STYLES.index(BASE_STYLE)] += 1.0 - c.alpha if target != BASE_STYLE else 1.0
    if target != BASE_STYLE:
        style[STYLES.index(target)] += c.alpha
    return {
        "style": style,
        "shape": SHAPES.index(c.shape),
        "colour": COLOURS.index(c.colour),
        "position": POSITIONS.index(c.position),
        "size": SIZES.index(c.size),
        "unsafe": np.array([1.0 - c.strength, c.strength] if c.unsafe else [1.0, 0.0], dtype=np.float32),
    }


def stack_labels(captions: list[str]) -> dict[str, np.ndarray]:
    """:func:`caption_labels` of every caption, stacked per label: ``{name: (N, ...)}``."""
    labels = [caption_labels(c) for c in captions]
    return {k: np.stack([np.asarray(lab[k]) for lab in labels]) for k in labels[0]}


def render_many(captions: list[str] | list[ToyCaption], seeds: list[int], mapper: Any = None) -> np.ndarray:
    """Images ``(N, 32, 32, 3)`` uint8 of :func:`render_array`; ``mapper(fn, items) -> list`` spreads the
    work (``ProcessGroup.shared_map`` in pretraining), default: here, in order."""
    items = list(zip(captions, seeds, strict=True))
    mapper = mapper or (lambda fn, xs: [fn(x) for x in xs])
    return np.stack(mapper(lambda item: render_array(*item), items))


def render_batch(captions: list[str], seeds: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images ``(N, 32, 32, 3)`` uint8 and stacked labels of :func:`caption_labels`."""
    return render_many(captions, seeds), stack_labels(captions)
