"""Images and captions scored by both the ``imagereward`` evaluator and the ``image-reward`` package
(tests/reference/image_reward_package.py): sizes that exercise the resize and centre crop, captions that
exercise padding, sub-words and truncation at 35 tokens."""

from __future__ import annotations

import numpy as np
from PIL import Image

CAPTIONS = ["a photo of a cat", "a red square on the left", "the blue dogs painting",
            "a small green circle on the right in cartoon style , with a large red square and a blue cat on "
            "the left of the painting of a photo of the dogs in the style of the cartoon painting"]
SIZES = [(32, 32), (48, 30), (300, 200), (224, 224)]


def cases() -> list[tuple[Image.Image, str]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    return list(zip(images, CAPTIONS, strict=True))
