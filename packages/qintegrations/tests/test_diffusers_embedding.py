"""Diffusers: a UNet with a class embedding (nn.Embedding) quantized while it loads, saved and
reloaded bit-identical."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import quanta.qintegrations  # noqa: E402, F401  (installs the registration hook)
from quanta.qintegrations.diffusers import QuantaConfig  # noqa: E402
from quanta.qmodules import QEmbedding  # noqa: E402


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=4,
    )  # fmt: skip


@torch.inference_mode()
def _output(model):
    torch.manual_seed(1)
    return model(torch.randn(1, 3, 8, 8), 3, class_labels=torch.tensor([2])).sample


@pytest.mark.slow  # Diffusers' from_pretrained twice; its quantizer is tested by default elsewhere
def test_class_embedding_quantized_on_load_and_reloaded(tmp_path):
    _unet().save_pretrained(tmp_path / "float")
    model = diffusers.UNet2DModel.from_pretrained(
        tmp_path / "float", quantization_config=QuantaConfig(weights="int8")
    )
    assert type(model.class_embedding) is QEmbedding and model.class_embedding.is_frozen
    model.save_pretrained(tmp_path / "saved")
    reloaded = diffusers.UNet2DModel.from_pretrained(tmp_path / "saved")
    assert type(reloaded.class_embedding) is QEmbedding
    assert torch.equal(_output(reloaded), _output(model))
