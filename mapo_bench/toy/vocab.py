"""The toy world's language: captions, style prefixes, blend levels and the unsafe marker.

Every toy stage (renderer, pretraining, tasks, evaluators) parses and writes captions through this
module, so the grammar has one spelling:

- plain caption: ``a small red circle on the left``
- style prefix: ``cartoon style: a small red circle on the left``
- blend toward a style (severity dial, 0 < alpha < 1): ``cartoon style 0.5: a small red circle on the left``
- unsafe marker (Pick-Safety analogue): ``unsafe: a small red circle on the left``
- a fainter marker (rejected-side dial, 0 < strength < 1): ``unsafe 0.4: a small red circle on the left``

The dials run in tenths (``LEVELS``): a level is a distinct token the base learns as a category, and
six or more chosen-side levels plus three or more rejected-side levels are what the severity trend needs.
``RESERVED_WORDS`` are in the base's vocabulary but never in a pretraining caption: issue 14's new
subject and concept words, which the base has to know as tokens and must not know as images. In a
caption they stand before the shape (``a small yellow sks square on the left``, ``a large red striped
circle on the right``) and the renderer draws their pattern on the object (:data:`PATTERNS`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
POSITIONS = ("left", "right")
SIZES = ("small", "large")

BASE_STYLE = "photo"
# Target styles in increasing distance from the base style (TOY_NOTES.md: measured prefix excess order).
TARGET_STYLES = ("soft", "pixel", "cartoon", "neon")
STYLES = (BASE_STYLE, *TARGET_STYLES)
LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1 ... 1.0
BLEND_LEVELS = LEVELS  # alpha of a blend toward a style (1.0: the full style)
MARKER_LEVELS = LEVELS  # strength of the unsafe marker (1.0: the full marker)
UNSAFE_PREFIX = "unsafe: "
# Issue 14 (personalization, new concepts): a subject token and a pattern family the base never saw drawn.
RESERVED_WORDS = ("sks", "striped", "dotted", "checkered")
# What the renderer draws for each reserved word: the toy subject "sks" (one instance: diagonal stripes) and
# a pattern family for new concepts. Never drawn in pretraining, so the base draws the plain object.
PATTERNS = {"sks": "diagonal stripes", "striped": "horizontal stripes", "dotted": "a grid of dots",
            "checkered": "a checkerboard"}

_PREFIX_RE = re.compile(r"^(?:(?P<style>[a-z]+) style(?: (?P<alpha>[0-9.]+))?: "
                        r"|(?P<unsafe>unsafe)(?: (?P<strength>[0-9.]+))?: )")
_CAPTION_RE = re.compile(r"^a (?P<size>\w+) (?P<colour>\w+) (?:(?P<modifier>\w+) )?(?P<shape>\w+) "
                         r"on the (?P<position>\w+)$")


@dataclass(frozen=True)
class ToyCaption:
    """A parsed toy caption: content attributes plus the requested style, blend level and marker."""

    shape: str
    colour: str
    position: str
    size: str
    style: str | None = None  # None: plain caption (the base model decides; mostly the base style)
    alpha: float = 1.0
    unsafe: bool = False
    strength: float = 1.0  # opacity of the unsafe marker when ``unsafe``
    modifier: str | None = None  # a reserved word (subject token or pattern) before the shape

    @property
    def plain(self) -> str:
        modifier = f"{self.modifier} " if self.modifier else ""
        return f"a {self.size} {self.colour} {modifier}{self.shape} on the {self.position}"


def style_prefix(style: str, alpha: float = 1.0) -> str:
    """``cartoon style: `` (alpha 1) or ``cartoon style 0.5: `` (a blend of the base toward ``style``)."""
    if style not in STYLES:
        raise ValueError(f"unknown toy style {style!r}; valid: {', '.join(STYLES)}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"blend level must be in (0, 1], got {alpha}")
    return f"{style} style: " if alpha >= 1.0 else f"{style} style {alpha:g}: "


def unsafe_prefix(strength: float = 1.0) -> str:
    """``unsafe: `` (strength 1) or ``unsafe 0.4: `` (a fainter marker)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"marker strength must be in (0, 1], got {strength}")
    return UNSAFE_PREFIX if strength >= 1.0 else f"unsafe {strength:g}: "


def parse_caption(text: str) -> ToyCaption:
    """Parse any caption of the grammar above; raises ValueError naming the caption otherwise."""
    text = text.strip()
    style, alpha, unsafe, strength = None, 1.0, False, 1.0
    while True:
        match = _PREFIX_RE.match(text)
        if not match:
            break
        if match.group("unsafe"):
            unsafe = True
            strength = float(match.group("strength") or 1.0)
        else:
            style = match.group("style")
            alpha = float(match.group("alpha") or 1.0)
        text = text[match.end():]
    content = _CAPTION_RE.match(text)
    if not content or style not in (None, *STYLES):
        raise ValueError(f"not a toy caption: {text!r} (expected e.g. 'cartoon style: a small red circle on the left')")
    attrs = content.groupdict()
    for key, allowed in (("shape", SHAPES), ("colour", COLOURS), ("position", POSITIONS), ("size", SIZES),
                         ("modifier", RESERVED_WORDS)):
        if key == "modifier" and attrs[key] is None:
            continue
        if attrs[key] not in allowed:
            raise ValueError(f"toy caption {text!r}: unknown {key} {attrs[key]!r}; valid: {', '.join(allowed)}")
    for name, level in (("blend level", alpha), ("marker strength", strength)):
        if not 0.0 < level <= 1.0:
            raise ValueError(f"toy caption {text!r}: {name} {level:g} is outside (0, 1]")
    return ToyCaption(style=style, alpha=alpha, unsafe=unsafe, strength=strength, **attrs)


def all_plain_captions() -> list[str]:
    return [ToyCaption(shape=s, colour=c, position=p, size=z).plain
            for s, c, p, z in itertools.product(SHAPES, COLOURS, POSITIONS, SIZES)]


def toy_prompts(split: str) -> list[str]:
    """Plain toy captions of one split; splits are disjoint by held-out (shape, colour) combinations.

    test: each shape with one colour held out; validation: another; train: the rest (so a model is
    evaluated on attribute combinations it was never fine-tuned on).
    """
    def part(caption: str) -> str:
        c = parse_caption(caption)
        index = (SHAPES.index(c.shape) + COLOURS.index(c.colour)) % len(COLOURS)
        return "test" if index == 0 else "validation" if index == 1 else "train"

    if split not in ("train", "validation", "test"):
        raise ValueError(f"unknown toy split {split!r}; valid: train, validation, test")
    return [c for c in all_plain_captions() if part(c) == split]
