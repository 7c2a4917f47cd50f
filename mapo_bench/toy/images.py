"""Toy image folders for the from-images task (issue 14): a subject or a concept the base never saw drawn.

The toy analogue of a user's folder of photos: renders of captions carrying a reserved word
(``vocab.RESERVED_WORDS``; the renderer draws its pattern on the object), written in the imagefolder
convention (PNG files plus ``metadata.jsonl`` with ``file_name`` and ``prompt``) so the same reader, task
and metrics run on them as on real photos.

- subject (personalization, DreamBooth's setting): one instance, ``sks`` on one shape in one colour,
  rendered at every size and position with ``seeds_per_context`` seeds: ``a small yellow sks square on
  the left``. New contexts to test it in: other colours (property change) and other styles
  (recontextualization), in :func:`subject_prompts`.
- concept (cultural representation): a pattern word on every shape and colour, ``a large red striped
  circle on the right``, drawn from a seeded permutation of all such captions.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from mapo_bench.toy import vocab


def subject_items(token: str, colour: str, shape: str, seeds_per_context: int = 2) -> list[tuple[str, int]]:
    """(caption, render seed) of the subject at every size and position."""
    check_word(token, colour, shape)
    return [(f"a {size} {colour} {token} {shape} on the {position}", seed)
            for size, position in itertools.product(vocab.SIZES, vocab.POSITIONS) for seed in range(seeds_per_context)]


def concept_items(word: str, count: int, seed: int = 0) -> list[tuple[str, int]]:
    """(caption, render seed) of ``count`` captions of ``word`` on shapes and colours (a seeded draw)."""
    check_word(word)
    captions = [f"a {z} {c} {word} {s} on the {p}" for s, c, p, z in
                itertools.product(vocab.SHAPES, vocab.COLOURS, vocab.POSITIONS, vocab.SIZES)]
    order = np.random.default_rng(seed).permutation(len(captions))[:count]
    return [(captions[i], int(i)) for i in sorted(order)]


def subject_prompts(token: str, colour: str, shape: str, split: str) -> list[str]:
    """Contexts the subject's images do not show: validation = two other colours and two other styles,
    test = the three remaining colours and the two remaining styles (each at every size and position)."""
    colours = [c for c in vocab.COLOURS if c != colour]
    styles = list(vocab.TARGET_STYLES)
    if split == "validation":
        picked_colours, picked_styles = colours[:2], styles[:2]
    elif split == "test":
        picked_colours, picked_styles = colours[2:], styles[2:]
    else:
        raise ValueError(f"subject prompts have splits validation and test, not {split!r}")
    contexts = list(itertools.product(vocab.SIZES, vocab.POSITIONS))
    prompts = [f"a {z} {c} {token} {shape} on the {p}" for c in picked_colours for z, p in contexts]
    prompts += [vocab.style_prefix(s) + f"a {z} {colour} {token} {shape} on the {p}" for s in picked_styles
                for z, p in contexts]
    return prompts


def concept_prompts(word: str, split: str) -> list[str]:
    """The toy captions of ``split`` (held-out shape and colour combinations) with ``word`` before the shape."""
    check_word(word)
    return [caption.replace(f" {shape} on", f" {word} {shape} on") for caption in vocab.toy_prompts(split)
            for shape in [vocab.parse_caption(caption).shape]]


def write_example(out: str | Path, word: str, *, concept: bool = False, colour: str = "yellow",
                  shape: str = "square", count: int = 12, seeds_per_context: int = 2, seed: int = 0) -> Path:
    """``out/images`` (the folder for ``build-dataset from-images``) and ``out/validation.txt`` /
    ``out/test.txt`` (its evaluation prompts: new contexts for a subject, held-out combinations for a
    concept); returns ``out``."""
    from mapo_bench.io import write_text_atomic

    out = Path(out)
    items = concept_items(word, count, seed) if concept else subject_items(word, colour, shape, seeds_per_context)
    write_folder(out / "images", items)
    for split in ("validation", "test"):
        prompts = concept_prompts(word, split) if concept else subject_prompts(word, colour, shape, split)
        write_text_atomic(out / f"{split}.txt", "\n".join(prompts) + "\n")
    return out


def check_word(word: str, colour: str = "red", shape: str = "circle") -> None:
    """One line naming what is not part of the toy world."""
    from mapo_bench.errors import MapoBenchError

    for what, value, valid in (("word", word, vocab.RESERVED_WORDS), ("colour", colour, vocab.COLOURS),
                               ("shape", shape, vocab.SHAPES)):
        if value not in valid:
            raise MapoBenchError(f"toy images: unknown {what} {value!r}; valid: {', '.join(valid)}"
                                 + (" (a reserved word the base never saw drawn)" if what == "word" else ""))


def write_folder(out: str | Path, items: list[tuple[str, int]]) -> Path:
    """Render ``items`` into ``out`` (``000.png`` ...) with ``metadata.jsonl``; returns ``out``."""
    from mapo_bench.io import write_text_atomic
    from mapo_bench.toy.render import render_caption

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (caption, seed) in enumerate(items):
        name = f"{i:03d}.png"
        render_caption(caption, seed).save(out / name, optimize=False)
        lines.append(json.dumps({"file_name": name, "prompt": caption, "seed": seed}))
    write_text_atomic(out / "metadata.jsonl", "\n".join(lines) + "\n")
    return out
