"""Randomized block Hadamard rotation of a linear layer's input (QuaRot-style).

For y = x Wᵀ and an orthogonal R, (x R)(W R)ᵀ = x Wᵀ: rotating the input and the weight's rows
leaves the output unchanged, while the rotated input has its outlier channels spread over whole
blocks, so one per-tensor activation scale fits every token far better. R = D H is a diagonal of
random signs D followed by a normalized Sylvester Hadamard matrix H on blocks of a power-of-two
size; it is applied in O(n log block) adds, never stored as a matrix.
"""

from __future__ import annotations

import torch


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """x R over the last dimension: x times `signs` [blocks, block] (±1), then an orthonormal
    Walsh-Hadamard transform of each block. Its own inverse when applied as R Rᵀ = I."""
    blocks, block = signs.shape
    shape = x.shape
    y = x.reshape(-1, blocks, block) * signs.to(x.dtype)
    half = 1
    while half < block:  # butterflies: (a, b) -> (a + b, a - b) at distance `half`
        y = y.reshape(-1, blocks, block // (2 * half), 2, half)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        half *= 2
    return (y.reshape(shape) * block**-0.5).to(x.dtype)


DEFAULT_LARGEST_BLOCK = 512


def hadamard_block_size(features: int, block_size: int | None = None) -> int:
    """The rotation block for `features` inputs: `block_size` checked (ValueError unless a power
    of two dividing `features`), or by default the largest such power up to 512."""
    if block_size is None:
        block = 1
        while block < DEFAULT_LARGEST_BLOCK and features % (2 * block) == 0:
            block *= 2
        return block
    if block_size < 1 or block_size & (block_size - 1) or features % block_size:
        raise ValueError(
            f"block_size must be a power of two dividing in_features ({features}), got {block_size}"
        )
    return block_size


def random_signs(features: int, block_size: int, seed: int) -> torch.Tensor:
    """±1 signs [features // block_size, block_size] drawn from `seed` (reproducible)."""
    hadamard_block_size(features, block_size)
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (features,), generator=generator) * 2 - 1
    return signs.reshape(-1, block_size).float()
