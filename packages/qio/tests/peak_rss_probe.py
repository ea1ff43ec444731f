"""Run by test_memory.py in fresh processes: write a random int4 LLM-shaped checkpoint, or load
it onto a meta-built model and report the peak resident memory as JSON.

    python peak_rss_probe.py write FOLDER
    python peak_rss_probe.py load FOLDER
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import torch
from torch import nn

from quanta.qio import load, save
from quanta.qmodules import freeze, quantize


@dataclass(frozen=True)
class DecoderConfig:
    """The sizes of a Llama-shaped decoder: 551M parameters by default."""

    vocab_size: int = 32000
    hidden_size: int = 1536
    intermediate_size: int = 4096
    layers: int = 16
    dtype: torch.dtype = torch.bfloat16


class Block(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        hidden, inner, dtype = config.hidden_size, config.intermediate_size, config.dtype
        self.norm = nn.RMSNorm(hidden, dtype=dtype)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(hidden, hidden, bias=False, dtype=dtype) for _ in range(4)
        )
        self.gate_proj = nn.Linear(hidden, inner, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden, inner, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(inner, hidden, bias=False, dtype=dtype)


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, dtype=config.dtype)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.lm_head = nn.Linear(
            config.hidden_size, config.vocab_size, bias=False, dtype=config.dtype
        )


def skeleton() -> Decoder:
    """The decoder built on the meta device from its config: no memory for its weights."""
    with torch.device("meta"):
        return Decoder(DecoderConfig())


def write(folder: str) -> None:
    """A frozen int4 model with random codes, scales and zero points (the values do not matter
    for memory), made without ever allocating the float weights."""
    model = freeze(quantize(skeleton(), weights="int4"))
    state = {}
    for key, tensor in model.state_dict().items():
        if tensor.dtype == torch.uint8:
            state[key] = torch.randint(0, 256, tensor.shape, dtype=torch.uint8)
        else:
            state[key] = (torch.rand(tensor.shape) * 0.01 + 1e-3).to(tensor.dtype)
    model.load_state_dict(state, assign=True)
    save(model, folder, max_shard_size="200MB")
    parameters = sum(math.prod(t.shape) for t in skeleton().parameters())
    print(json.dumps({"parameters": parameters}))


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry over the peak of the
    process that forked it, pytest, across exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def measure_load(folder: str) -> None:
    model = skeleton()
    before = peak_rss_bytes()
    load(folder, model, progress=False)
    peak = peak_rss_bytes()
    quantized = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"before": before, "peak": peak, "quantized_bytes": quantized}))


if __name__ == "__main__":
    {"write": write, "load": measure_load}[sys.argv[1]](sys.argv[2])
