"""Real evaluation data that ships inside PyPI packages: Lee news text and sample photos."""

from __future__ import annotations

import os
import re

import torch

from demo.deps import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Natural photos from skimage.data that ship inside the scikit-image wheel (no download).
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera", "clock", "coins")


def lee_text() -> str:
    """The Lee background corpus: 300 ABC news articles, one per line (gensim test data)."""
    path = os.path.join(require("gensim"), "test", "test_data", "lee_background.cor")
    with open(path, encoding="utf8") as f:
        return f.read()


def lee_sentences(count: int, min_words: int = 5) -> list[str]:
    """The first `count` sentences of at least `min_words` words from the Lee corpus."""
    sentences = []
    for line in lee_text().splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip()):
            if len(sentence.split()) >= min_words:
                sentences.append(sentence)
                if len(sentences) == count:
                    return sentences
    return sentences


def _photo(name: str) -> torch.Tensor:
    """One skimage.data photo as a float RGB tensor [3, H, W] in [0, 1]."""
    require("skimage")
    import skimage.data

    image = (
        skimage.data.stereo_motorcycle()[0]
        if name == "motorcycle"
        else getattr(skimage.data, name)()
    )
    pixels = torch.from_numpy(image).float() / 255.0
    if pixels.ndim == 2:  # grayscale photos: repeat into three channels
        pixels = pixels[..., None].expand(-1, -1, 3)
    return pixels[..., :3].permute(2, 0, 1).contiguous()


def photo_batch(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """`count` ImageNet-normalised views [count, 3, size, size] of the sample photos.

    The first view of each photo is the standard evaluation crop (short side 256, centre 224);
    the others are random square crops of 40-100% of the short side, flipped half of the time,
    which makes an agreement set larger than the handful of photos.
    """
    generator = torch.Generator().manual_seed(seed)
    photos = [_photo(name) for name in PHOTO_NAMES]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    views = []
    for k in range(count):
        photo = photos[k % len(photos)]
        _, height, width = photo.shape
        short = min(height, width)
        if k < len(photos):
            side = short * 224 // 256
            top, left = (height - side) // 2, (width - side) // 2
            flip = False
        else:
            side = int(short * float(torch.empty(1).uniform_(0.4, 1.0, generator=generator)))
            top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
            flip = bool(torch.rand(1, generator=generator) < 0.5)
        crop = photo[:, top : top + side, left : left + side]
        crop = crop.flip(-1) if flip else crop
        view = torch.nn.functional.interpolate(
            crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        views.append((view - mean) / std)
    return torch.stack(views)
