"""Folders of images in the Hugging Face ``imagefolder`` convention: the one reader of user image folders.

A folder holds image files and, optionally, ``metadata.jsonl``: one JSON object per line with a
``file_name`` (relative to the folder) and per-image fields (``prompt`` or ``caption`` or ``text``;
optional ``seed`` and ``model``). Without metadata every image file directly in the folder is read, in
name order, with no caption. Used by the subject-fidelity metrics (``clip-i``, ``dino``: the subject's
reference images) and by issue 14's from-images task and issue 15's ``eval`` on image folders.

Every image is decoded once when the folder is read, upright (EXIF orientation applied) and in RGB, so
a bad file is named before any work starts; ``skip_bad=True`` skips such files and counts them instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapo_bench.errors import MapoBenchError

METADATA_FILE = "metadata.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_KEYS = ("prompt", "caption", "text")


@dataclass(frozen=True)
class FolderImage:
    """One image of a folder: its file, caption, optional seed / model label, original size and pixels."""

    file: Path
    prompt: str | None
    seed: int | None
    model: str | None
    original_size: tuple[int, int]
    image: Any = field(repr=False, compare=False)
    converted: tuple[str, ...] = ()  # what decoding changed: "from CMYK", "from I;16", "EXIF-rotated", ...


@dataclass(frozen=True)
class ImageFolder:
    """The usable images of a folder and the files skipped as bad (file -> reason; only with skip_bad)."""

    root: Path
    images: list[FolderImage]
    skipped: dict[str, str]


def folder_digest(images: list[FolderImage]) -> str:
    """A digest of the images' relative names and pixels: the identity of a folder's content."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for record in images:
        digest.update(f"{record.file.name}\0{record.image.mode}:{record.image.size}\0".encode())
        digest.update(record.image.tobytes())
    return digest.hexdigest()


MAX_PIXELS = 64_000_000  # 8000 x 8000: far above any training or sample image; beyond it a file is a bomb


def open_image(source: Any) -> Any:
    """``Image.open`` of a path or file object that refuses more than MAX_PIXELS before decoding.

    PIL itself only warns up to twice its own limit (about 179 M pixels, 0.5 GB as RGB); this raises
    ``Image.DecompressionBombError``, which every reader already reports as an undecodable file.
    """
    import warnings

    from PIL import Image

    with warnings.catch_warnings():  # Pillow's own warning fires above 89 M px: refused below, said once
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise Image.DecompressionBombError(f"{width}x{height} pixels, more than the {MAX_PIXELS} allowed")
    return image


def decode_upright_rgb(source: Any) -> tuple[Any, tuple[int, int], tuple[str, ...]]:
    """Decode fully, apply the EXIF orientation, convert to RGB: (image, size as stored, what changed)."""
    from PIL import ImageOps

    with open_image(source) as opened:
        opened.load()
        size = opened.size
        changed = [] if opened.mode == "RGB" else [f"from {opened.mode}"]
        if opened.getexif().get(0x0112, 1) != 1:  # the EXIF Orientation tag
            changed.append("EXIF-rotated")
        image = to_rgb(ImageOps.exif_transpose(opened))
    return image, size, tuple(changed)


def load_upright_rgb(path: Path) -> tuple[Any, tuple[int, int]]:
    """Decode ``path`` fully, apply its EXIF orientation, convert to RGB; returns (image, size as stored)."""
    image, size, _ = decode_upright_rgb(path)
    return image, size


def conversion_counts(images: list[FolderImage]) -> dict[str, int]:
    """How many images each conversion touched (for a manifest): {"from CMYK": 2, "EXIF-rotated": 1}."""
    from collections import Counter

    return dict(sorted(Counter(change for record in images for change in record.converted).items()))


def to_rgb(image: Any) -> Any:
    """RGB for any mode; 16-bit greyscale (PIL modes I;16*, I) is scaled to 8 bits, not clipped at 255."""
    from PIL import Image

    if image.mode.startswith("I"):
        import numpy as np

        grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def read_image_folder(folder: str | Path, *, min_images: int = 1, skip_bad: bool = False,
                      require_prompts: bool = False) -> ImageFolder:
    """Read ``folder``; every problem is one MapoBenchError line naming the file (and metadata line).

    ``min_images``: fewer usable images is an error. ``require_prompts``: every image needs a caption.
    """
    root = _folder(folder)
    entries = folder_entries(root)
    images: list[FolderImage] = []
    skipped: dict[str, str] = {}
    for where, relative, meta in entries:
        path = root / relative
        try:
            image, size, converted = decode_upright_rgb(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises several types for corrupt or huge files
            reason = f"cannot decode image ({type(exc).__name__})"
            if not skip_bad:
                raise MapoBenchError(f"{path}{where}: {reason}; remove the file or skip bad images "
                                     "(skip_bad=true)") from None
            skipped[relative] = reason
            continue
        prompt = _caption(meta, path, where)
        if require_prompts and prompt is None:
            raise MapoBenchError(f"{path}{where}: no caption; give each image a 'prompt' in {root / METADATA_FILE}")
        images.append(FolderImage(file=path, prompt=prompt, seed=_seed(meta, path, where),
                                  model=_model(meta, path, where), original_size=size, image=image,
                                  converted=converted))
    if len(images) < min_images:
        found = f"{len(images)} usable image(s)" + (f" ({len(skipped)} skipped as bad)" if skipped else "")
        raise MapoBenchError(f"{root}: {found}; at least {min_images} needed")
    return ImageFolder(root=root, images=images, skipped=skipped)


def _folder(folder: str | Path) -> Path:
    root = Path(folder)
    if not root.is_dir():
        raise MapoBenchError(f"{root}: no such image folder")
    return root


def folder_entries(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, relative file, metadata) of every image of the folder, without decoding any."""
    return _metadata_entries(root) if (root / METADATA_FILE).is_file() else _plain_entries(root)


def _plain_entries(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    files = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [("", name, {}) for name in files]


def _metadata_entries(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    path = root / METADATA_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MapoBenchError(f"{path}: not UTF-8 text") from None
    entries, seen = [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MapoBenchError(f"{path} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("file_name"), str) or not meta["file_name"].strip():
            raise MapoBenchError(f"{path} line {number}: needs a 'file_name' string")
        relative = meta["file_name"].strip()
        resolved = (root / relative).resolve()
        if root.resolve() not in resolved.parents:
            raise MapoBenchError(f"{path} line {number}: file_name {relative!r} points outside the folder")
        if relative in seen:
            raise MapoBenchError(f"{path} line {number}: file_name {relative!r} listed twice")
        if not resolved.is_file():
            raise MapoBenchError(f"{path} line {number}: file {relative!r} not found in {root}")
        seen.add(relative)
        entries.append((f" ({METADATA_FILE} line {number})", relative, meta))
    unlisted = sorted(set(name for _, name, _ in _plain_entries(root)) - seen)
    if unlisted:
        raise MapoBenchError(f"{path}: {len(unlisted)} image file(s) of the folder not listed (first: {unlisted[0]!r}); "
                             "list them or move them out")
    if not entries:
        raise MapoBenchError(f"{path}: no entries")
    return entries


def _caption(meta: dict[str, Any], path: Path, where: str) -> str | None:
    key = next((k for k in CAPTION_KEYS if k in meta), None)
    if key is None or meta[key] is None:
        return None
    value = meta[key]
    if not isinstance(value, str) or not value.strip():
        raise MapoBenchError(f"{path}{where}: {key!r} must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def _seed(meta: dict[str, Any], path: Path, where: str) -> int | None:
    value = meta.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MapoBenchError(f"{path}{where}: 'seed' must be a non-negative integer, got {value!r}")
    return value


def _model(meta: dict[str, Any], path: Path, where: str) -> str | None:
    value = meta.get("model")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise MapoBenchError(f"{path}{where}: 'model' must be a non-empty string, got {value!r}")
    return value


def prompt_key(prompt: str) -> int:
    """A stable prompt id from the caption text, so the same prompt pairs across folders of other tools."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(" ".join(prompt.split()).encode(), digest_size=6).digest(), "big")


def folder_index(folder: str | Path) -> Any:
    """A sample index (prompt_id, prompt, seed, model, file) of an imagefolder, for ``mapo-bench eval``.

    Read from the metadata only (eval decodes each image when it scores it, and names a bad one then).
    Every image needs a caption. ``prompt_id`` comes from the caption text (:func:`prompt_key`); ``seed``
    from the metadata, else the image's position among the folder's images of the same caption; ``model``
    from the metadata, else the folder's name.
    """
    import pandas as pd

    root = _folder(folder)
    seen: dict[str, int] = {}
    rows = []
    for where, relative, meta in folder_entries(root):
        prompt = _caption(meta, root / relative, where)
        if prompt is None:
            raise MapoBenchError(f"{root / relative}{where}: no caption; give each image a 'prompt' in "
                                 f"{root / METADATA_FILE}")
        ordinal = seen.get(prompt, 0)
        seen[prompt] = ordinal + 1
        seed = _seed(meta, root / relative, where)
        rows.append({"prompt_id": prompt_key(prompt), "prompt": prompt, "seed": ordinal if seed is None else seed,
                     "model": _model(meta, root / relative, where) or root.resolve().name, "file": relative})
    return pd.DataFrame(rows, columns=["prompt_id", "prompt", "seed", "model", "file"])
