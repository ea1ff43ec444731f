"""The demo: quantize three real models at several weight types and print one table.

For each model the fp32 original is loaded once and scored; every quantized row starts from a
fresh deep copy of it, is quantized and frozen, saved with quanta.qio and loaded back into a
skeleton of the model whose parameters are on the meta device. The reloaded model, checked to
give the same outputs as the one saved, is what is scored against the fp32 numbers.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from demo import data, models
from quanta.qcalib import awq
from quanta.qintegrations import metrics
from quanta.qio import load, meta_skeleton, save
from quanta.qmodules import freeze, layout_for, quantize, weight_memory
from quanta.qtypes import to_qtype

MODEL_NAMES = ("smollm2", "minilm", "mobilenet")
WEIGHT_NAMES = ("int8", "int4", "int2", "float8", "nf4", "int4-awq")
# rows whose weights are calibrated (AWQ) on data held out from scoring: models with such data only
CALIBRATED = {"int4-awq": "int4"}

SENTENCE_BATCH = 32  # MiniLM sentences per batch
IMAGE_BATCH = 16  # MobileNetV2 images per batch
MB = 1e6
# inputs on which a reloaded model must give exactly the saved model's outputs
PROBE_TOKENS, PROBE_SENTENCES, PROBE_IMAGES = 64, 4, 2
# AWQ calibration: windows of Lee tokens that follow the scored ones
CALIBRATION_WINDOWS, CALIBRATION_TOKENS = 2, 512


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: which models and weight types, and how much data to score on."""

    models: Sequence[str] = MODEL_NAMES
    weights: Sequence[str] = WEIGHT_NAMES
    tokens: int = 8192
    sentences: int = 512
    images: int = 128
    group_size: int | None = None
    cache: Path | None = None
    output: Path | None = None  # where the quantized checkpoints go (default: a temporary folder)


@dataclass
class ModelUnderTest:
    """An fp32 model and the function that scores it, or a quantized copy of it."""

    title: str
    model: nn.Module
    metric_name: str
    time_unit: str
    score: Callable[[nn.Module], tuple[float, float]]  # model -> (metric, seconds per unit)
    probe: Callable[[nn.Module], torch.Tensor]  # model -> its outputs on one small input
    exclude: str | list[str] | None = None
    calibration: list[torch.Tensor] | None = None  # held-out batches for the calibrated rows


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table."""

    model: str
    weights: str
    size_fp32_mb: float
    size_mb: float
    file_mb: float
    metric_name: str
    metric: float
    metric_fp32: float
    time_unit: str
    seconds: float
    seconds_fp32: float


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters (tied ones counted once) stored in fp32."""
    return sum(p.numel() * 4 for p in model.parameters())


def quantized_copy(
    model: nn.Module,
    weights: str,
    exclude: str | list[str] | None = None,
    group_size: int | None = None,
    progress: bool = True,
    calibration: list[torch.Tensor] | None = None,
) -> nn.Module:
    """A deep copy of `model` with quantized, frozen weights; `model` itself is left as is.
    `group_size` applies to grouped weights (the others have one scale per output channel); a
    calibrated row (CALIBRATED, e.g. "int4-awq") runs AWQ on `calibration` before freezing.

    Each Linear / Conv1d / Conv2d / Embedding is frozen on its own, so the progress bar moves
    while a large model is being quantized.
    """
    layer_names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding))
    ]
    qmodel = copy.deepcopy(model)
    with tqdm(
        total=len(layer_names) + 1, desc=f"quantize {weights}", leave=False, disable=not progress
    ) as bar:
        qtype = to_qtype(CALIBRATED.get(weights, weights))
        grouped = layout_for(qtype).grouped
        quantize(qmodel, qtype, exclude=exclude, group_size=group_size if grouped else None)
        if weights in CALIBRATED:
            awq(qmodel, calibration, progress=False)
        bar.update()
        for name in layer_names:
            freeze(qmodel.get_submodule(name), progress=False)  # this bar counts the modules
            bar.update()
    return qmodel.eval()


def saved_and_reloaded(
    qmodel: nn.Module, model: nn.Module, folder: Path, probe: Callable[[nn.Module], torch.Tensor]
) -> tuple[nn.Module, int]:
    """Save `qmodel` into `folder`, load it into a meta skeleton of `model`; return the loaded
    model and the bytes on disk. Raises RuntimeError when the two disagree on `probe`."""
    save(qmodel, folder)
    reloaded = load(folder, meta_skeleton(model), progress=False).eval()
    with torch.inference_mode():
        if not torch.equal(probe(reloaded), probe(qmodel)):
            raise RuntimeError(f"the model reloaded from {folder} differs from the one saved")
    return reloaded, sum(f.stat().st_size for f in folder.iterdir())


def _timed(function: Callable[[], object], warmup: Callable[[], object]) -> tuple[object, float]:
    """`function()` and its wall time, after an untimed `warmup()` (first calls build kernels)."""
    warmup()
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def smollm2_under_test(settings: DemoSettings) -> ModelUnderTest:
    """SmolLM2-135M scored by perplexity on the first `settings.tokens` Lee corpus tokens."""
    model, tokenizer = models.load_smollm2(settings.cache)
    held_out = settings.tokens + CALIBRATION_WINDOWS * CALIBRATION_TOKENS
    token_ids, after = metrics.lm_token_ids(tokenizer, data.lee_text(), held_out).split(
        settings.tokens
    )
    bos = torch.tensor([tokenizer.bos_token_id])
    calibration = [torch.cat([bos, window])[None] for window in after.split(CALIBRATION_TOKENS)]

    def score(candidate: nn.Module) -> tuple[float, float]:
        value, seconds = _timed(
            lambda: metrics.perplexity(candidate, token_ids, tokenizer.bos_token_id),
            lambda: metrics.perplexity(candidate, token_ids[:64], tokenizer.bos_token_id),
        )
        return value, seconds / token_ids.numel()

    def probe(candidate: nn.Module) -> torch.Tensor:
        return candidate(token_ids[None, :PROBE_TOKENS]).logits

    return ModelUnderTest(
        "SmolLM2-135M", model, "perplexity", "token", score, probe,
        exclude=["lm_head", "model.embed_tokens"],  # tied: kept float together
        calibration=calibration,
    )  # fmt: skip


def minilm_under_test(settings: DemoSettings) -> ModelUnderTest:
    """all-MiniLM-L6-v2 scored by mean cosine to its fp32 embeddings of Lee corpus sentences."""
    model, tokenizer = models.load_minilm()
    sentences = data.lee_sentences(settings.sentences)
    batches = -(-len(sentences) // SENTENCE_BATCH)
    reference = metrics.sentence_embeddings(model, tokenizer, sentences, SENTENCE_BATCH)

    def score(candidate: nn.Module) -> tuple[float, float]:
        embeddings, seconds = _timed(
            lambda: metrics.sentence_embeddings(candidate, tokenizer, sentences, SENTENCE_BATCH),
            lambda: metrics.sentence_embeddings(candidate, tokenizer, sentences[:SENTENCE_BATCH]),
        )
        return metrics.mean_cosine(reference, embeddings), seconds / batches

    def probe(candidate: nn.Module) -> torch.Tensor:
        return metrics.sentence_embeddings(candidate, tokenizer, sentences[:PROBE_SENTENCES])

    return ModelUnderTest(
        "all-MiniLM-L6-v2", model, "cosine", f"batch of {SENTENCE_BATCH}", score, probe
    )


def mobilenet_under_test(settings: DemoSettings) -> ModelUnderTest:
    """MobileNetV2 scored by top-1 agreement with fp32 on crops and flips of real photos."""
    model = models.load_mobilenet_v2()
    images = data.photo_batch(settings.images)
    batches = -(-len(images) // IMAGE_BATCH)
    reference = metrics.classify(model, images, IMAGE_BATCH)

    def score(candidate: nn.Module) -> tuple[float, float]:
        logits, seconds = _timed(
            lambda: metrics.classify(candidate, images, IMAGE_BATCH),
            lambda: metrics.classify(candidate, images[:IMAGE_BATCH]),
        )
        return metrics.top1_agreement(reference, logits), seconds / batches

    def probe(candidate: nn.Module) -> torch.Tensor:
        return candidate(images[:PROBE_IMAGES])

    return ModelUnderTest(
        "MobileNetV2", model, "top-1 agree", f"batch of {IMAGE_BATCH}", score, probe
    )


MODELS_UNDER_TEST: dict[str, Callable[[DemoSettings], ModelUnderTest]] = {
    "smollm2": smollm2_under_test,
    "minilm": minilm_under_test,
    "mobilenet": mobilenet_under_test,
}


def run_demo(settings: DemoSettings, progress: bool = True) -> list[DemoRow]:
    """Score every requested model in fp32 and at every requested weight type, the quantized
    ones after a save and reload (checkpoints under `settings.output`, else a temporary one)."""
    if settings.output is not None:
        return _run_demo(settings, Path(settings.output), progress)
    with tempfile.TemporaryDirectory(prefix="quanta-demo-") as folder:
        return _run_demo(settings, Path(folder), progress)


def _run_demo(settings: DemoSettings, output: Path, progress: bool) -> list[DemoRow]:
    rows = []
    for name in settings.models:
        under_test = MODELS_UNDER_TEST[name](settings)
        fp32_metric, fp32_seconds = under_test.score(under_test.model)
        size_fp32 = model_bytes(under_test.model)
        rows.append(
            DemoRow(
                under_test.title, "fp32", size_fp32 / MB, size_fp32 / MB, size_fp32 / MB,
                under_test.metric_name, fp32_metric, fp32_metric,
                under_test.time_unit, fp32_seconds, fp32_seconds,
            )
        )  # fmt: skip
        for weights in settings.weights:
            if weights in CALIBRATED and under_test.calibration is None:
                continue  # no held-out data to calibrate this model on
            qmodel = quantized_copy(
                under_test.model, weights, under_test.exclude, settings.group_size, progress,
                under_test.calibration,
            )  # fmt: skip
            quantized_bytes, float_bytes = weight_memory(qmodel)
            qmodel, file_bytes = saved_and_reloaded(
                qmodel, under_test.model, output / f"{name}-{weights}", under_test.probe
            )
            metric, seconds = under_test.score(qmodel)
            del qmodel
            rows.append(
                DemoRow(
                    under_test.title, weights, size_fp32 / MB,
                    (size_fp32 - float_bytes + quantized_bytes) / MB, file_bytes / MB,
                    under_test.metric_name, metric, fp32_metric,
                    under_test.time_unit, seconds, fp32_seconds,
                )
            )  # fmt: skip
    return rows


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_table(rows: Sequence[DemoRow]) -> str:
    """The demo table: size, accuracy against fp32 and speed against fp32, one row per run."""
    header = (
        "model", "weights", "MB fp32", "MB quant", "size", "MB file", "metric", "value",
        "vs fp32", "time", "per", "vs fp32",
    )  # fmt: skip
    lines = []
    for row in rows:
        if row.metric_name == "perplexity":
            ratio = row.metric / row.metric_fp32
            versus = f"{100 * (ratio - 1):+.2f}%" if ratio < 2 else f"{ratio:.3g}x"
            value = f"{row.metric:.2f}" if row.metric < 1e5 else f"{row.metric:.3g}"
        else:
            versus = f"{row.metric - row.metric_fp32:+.4f}"
            value = f"{row.metric:.4f}"
        lines.append(
            (
                row.model, row.weights, f"{row.size_fp32_mb:.1f}", f"{row.size_mb:.1f}",
                f"{row.size_mb / row.size_fp32_mb:.3f}x", f"{row.file_mb:.1f}", row.metric_name,
                value,
                versus, _format_seconds(row.seconds), row.time_unit,
                f"{row.seconds / row.seconds_fp32:.2f}x",
            )
        )  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    left = {0, 1, 6, 10}  # text columns; numbers align right

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def main(settings: DemoSettings) -> str:
    """Run the demo, print its table and the wall time, and return the table."""
    torch.manual_seed(0)
    start = time.perf_counter()
    table = format_table(run_demo(settings))
    print(table)
    wall = time.perf_counter() - start
    print(f"\nquanta demo: {wall:.1f} s wall on {torch.get_num_threads()} threads")
    print("MB: all parameters in fp32, and with the quantized weights' codes, scales, zero points")
    print("MB file: the quanta.save checkpoint each quantized row was reloaded from and scored")
    return table
