"""Quantize a small DiT built from a config with Diffusers' QuantaConfig, sample, save, reload."""

from __future__ import annotations

import tempfile

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

from quanta.qintegrations.diffusers import QuantaConfig, quantize_model

STEPS = 10


def small_dit() -> DiTTransformer2DModel:
    """A class-conditional DiT with random weights (no pretrained DiT ships offline)."""
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=4,
        num_layers=4,
        sample_size=16,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()


def sample(transformer: DiTTransformer2DModel, label: int = 3) -> torch.Tensor:
    """Latents denoised from fixed noise in a few DDIM steps."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(STEPS)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([label])
    with torch.inference_mode():
        for t in scheduler.timesteps:
            noise = transformer(latents, timestep=t[None], class_labels=labels).sample
            latents = scheduler.step(
                noise[:, :4], t, latents
            ).prev_sample  # DiT: noise and variance
    return latents


def main() -> None:
    transformer = small_dit()
    reference = sample(transformer)

    quantize_model(transformer, QuantaConfig(weights="int8", modules_to_not_convert=["proj_out*"]))
    latents = sample(transformer)
    error = (latents - reference).norm() / reference.norm()
    print(f"{STEPS} DDIM steps, int8 weights: relative error {error:.4f} against float")

    with tempfile.TemporaryDirectory() as folder:
        transformer.save_pretrained(folder)  # quanta's frozen layout, config in config.json
        reloaded = DiTTransformer2DModel.from_pretrained(folder).eval()  # rebuilt quantized
    assert torch.equal(sample(reloaded), latents)
    print("reloaded with from_pretrained: same latents")


if __name__ == "__main__":
    main()
