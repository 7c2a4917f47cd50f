"""The from-images task (issue 14): chosen = the user's images, rejected = the reference's own samples.

Personalization (one subject: ``token`` sks, ``subject_class`` dog) and cultural representation (a concept
the reference draws poorly, each image with its own caption) are both this task: a folder of 3-50
images in the imagefolder convention (:mod:`mapo_bench.data.imagefolder`) and caption templates. Image i
with template t is prompt ``i * T + t``; its caption is the template filled with ``{token}``,
``{class}`` and ``{caption}`` (the image's own caption from metadata.jsonl). Both images of a pair carry
that caption; the rejected one is generated from it by the reference, so the mismatch comes from the
reference (MaPO's personalization setting; REFERENCE.md section 7). The chosen image is resized
(shorter side, bicubic) and centre-cropped to the size the reference generates; the original sizes are
recorded in the manifest, and the folder's pixels are part of the dataset's identity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mapo_bench.data.tasks import CardInfo, Task
from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.base import ScoreContext

DEFAULT_TEMPLATES = ("a photo of {token} {class}",)
PLACEHOLDERS = ("token", "class", "caption")


def fit(image: Any, size: tuple[int, int]) -> Any:
    """``image`` cropped to the centre region of ``size``'s aspect ratio and resized to ``size`` (bicubic)."""
    from PIL import Image, ImageOps

    return ImageOps.fit(image, size, method=Image.Resampling.BICUBIC)


def fill_template(template: str, token: str | None, subject_class: str | None, caption: str | None,
                  where: str) -> str:
    """``template`` with {token}, {class}, {caption} filled; a placeholder without a value is an error."""
    import string

    values = {"token": token, "class": subject_class, "caption": caption}
    names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    for name in names:
        if name not in PLACEHOLDERS:
            raise MapoBenchError(f"caption template {template!r}: unknown placeholder {{{name}}}; "
                                 f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        if not values[name]:
            need = {"token": "--token", "class": "--class", "caption": "a 'prompt' per image in metadata.jsonl"}
            raise MapoBenchError(f"{where}: caption template {template!r} needs {{{name}}}: give {need[name]}")
    return " ".join(template.format(**{k: v or "" for k, v in values.items()}).split())


@dataclass
class FromImages(Task):
    """Pairs from a folder of images: chosen = the image, rejected = the reference's sample of its caption."""

    name: ClassVar[str] = "from-images"
    gives_chosen: ClassVar[bool] = True
    extra_keys: ClassVar[tuple[str, ...]] = ("images", "token", "subject_class", "caption_templates",
                                             "image_source", "image_license", "min_images")
    images: Path | None = None
    token: str | None = None
    subject_class: str | None = None
    caption_templates: tuple[str, ...] | list[str] | None = None
    image_source: str | None = None
    image_license: str | None = None
    min_images: int = 3

    def __post_init__(self) -> None:
        self.caption_templates = tuple(self.caption_templates or DEFAULT_TEMPLATES)

    def prefixes(self) -> tuple[str | None, str | None]:
        return None, None  # both sides are described by the caption; the chosen image is given

    def score_context(self) -> ScoreContext:
        return ScoreContext(task=self.name, subject_images=str(self.images) if self.images is not None else None)

    @functools.cached_property
    def folder(self) -> Any:
        from mapo_bench.data.imagefolder import read_image_folder

        if self.images is None:
            raise MapoBenchError("from-images needs the folder of chosen images: --images DIR")
        return read_image_folder(self.images, min_images=self.min_images)

    def records(self) -> list[tuple[int, str]]:
        templates = list(self.caption_templates)
        return [(i * len(templates) + t, fill_template(template, self.token, self.subject_class, image.prompt,
                                                       str(image.file)))
                for i, image in enumerate(self.folder.images) for t, template in enumerate(templates)]

    def given_chosen(self, prompt_ids: list[int], size: tuple[int, int]) -> list[Any]:
        images = self.folder.images
        return [fit(images[pid // len(self.caption_templates)].image, size) for pid in prompt_ids]

    @functools.cached_property
    def _digest(self) -> str:  # the folder's pixels are hashed once per task object
        from mapo_bench.data.imagefolder import folder_digest

        return folder_digest(self.folder.images)

    def content_digest(self) -> str:
        return self._digest

    def manifest_extra(self) -> dict[str, Any]:
        from mapo_bench.data.imagefolder import conversion_counts

        return {"content_digest": self.content_digest(), "images": {"folder": str(self.images), "source": self.image_source, "license": self.image_license,
                           "converted_to_rgb": conversion_counts(self.folder.images),
                           "files": [{"file": str(image.file.relative_to(self.folder.root)),
                                      "original_size": list(image.original_size)} for image in self.folder.images]}}

    def card(self) -> CardInfo:
        subject = " ".join(part for part in (self.token, self.subject_class) if part) or "the given images"
        source = self.image_source or "not stated by the user"
        license_ = self.image_license or "not stated by the user"
        return CardInfo(
            title=f"Pairs from images ({subject})",
            summary=(f"Chosen images are the user's own images of {subject} (source: {source}; licence: {license_}), "
                     "resized and centre-cropped; rejected images are the reference model's samples for the same "
                     "caption, so the mismatch comes from the reference (personalization / new concepts)."),
            chosen_template="the user's image for `" + " | ".join(self.caption_templates) + "`",
            rejected_template="the reference's sample for the same caption",
            tags=("preference", "dpo", "mapo", "personalization"))


@dataclass
class ClassImages(Task):
    """DreamBooth's class images (REFERENCE.md 7): both images of a row are the reference's samples for the
    class caption ("a photo of dog"), with different seeds, labelled 0.5 / 0.5 (no preference). The
    ``dreambooth`` method reads them as its prior-preservation stream (``dreambooth.class_data``); a
    preference method refuses them (every row is a tie)."""

    name: ClassVar[str] = "class-images"
    extra_keys: ClassVar[tuple[str, ...]] = ("subject_class", "caption_templates")
    labels: ClassVar[tuple[float, float]] = (0.5, 0.5)
    subject_class: str | None = None
    caption_templates: tuple[str, ...] | list[str] | None = None

    def __post_init__(self) -> None:
        self.caption_templates = tuple(self.caption_templates or CLASS_TEMPLATES)

    def prefixes(self) -> tuple[str | None, str | None]:
        return None, None

    def records(self) -> list[tuple[int, str]]:
        return [(t, fill_template(template, None, self.subject_class, None, "class-images"))
                for t, template in enumerate(self.caption_templates)]

    def side_seeds(self, seed: int) -> tuple[int, int]:
        return two_seeds(seed)

    def card(self) -> CardInfo:
        return CardInfo(
            title=f"Class images ({self.subject_class})",
            summary=("Both images of every row are the reference model's own samples for the class caption, with "
                     "different seeds; labels are 0.5 / 0.5 (no preference). DreamBooth's prior-preservation data "
                     "(`dreambooth.class_data`), not a preference dataset."),
            chosen_template=" | ".join(self.caption_templates), rejected_template=" | ".join(self.caption_templates),
            tags=("dreambooth", "prior-preservation", self.subject_class or "class"))


CLASS_TEMPLATES = ("a photo of {class}",)


def two_seeds(seed: int) -> tuple[int, int]:
    """Two different samples per row: the second image's seed is drawn from the row's seed."""
    import numpy as np

    return seed, int(np.random.SeedSequence([seed, 0xC1A55]).generate_state(1, dtype=np.uint32)[0])
