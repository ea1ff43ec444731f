"""AWQ: activation-aware scaling of weight columns before low-bit rounding (Lin et al. 2023).

A few input channels of each linear carry much larger activations than the rest, so the
rounding error of their weight columns costs more. Multiplying column j by s_j > 1 and dividing
input channel j by s_j leaves the product unchanged in float but shrinks that column's relative
rounding error. The 1/s is folded into the op that produces the input (a norm's weight and
bias, or a linear's rows), so the model keeps its structure and runs no extra op. Per group of
linears that read the same input, s = mean|x|^alpha with the alpha on a grid in [0, 1] that
gives the least output error of the group's quantized linears on the calibration inputs
(alpha = 0 is plain round-to-nearest, so the search is never worse on those inputs).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from quanta.qcalib.batches import run_batches
from quanta.qmodules import QLinear, QModuleMixin, float_activations, layout_for, progress_bar

# s = mean|x|^alpha is normalized to a geometric mean of 1 between its extremes and kept at
# least this far from 0 (channels that never fire), as in the reference implementation
MIN_FACTOR = 1e-4
# a producer folds exactly when the scaled run reproduces the inputs times the test factors to
# this relative error, or FOLD_EPSILONS of the weights' epsilon for bf16/fp16 (float32
# reassociation is ~1e-6; a nonlinearity, attention or residual in between gives ~1e-1)
FOLD_TOLERANCE = 1e-3
FOLD_EPSILONS = 8
PROBE_ROWS = 64  # input rows, spread over the first batch, compared by the fold check


@dataclass(eq=False)
class _Group:
    """Linears reading one input, the module whose output that input is, and what was seen."""

    members: list[tuple[str, QLinear]]
    producer: tuple[str, nn.Module] | None
    abs_sum: torch.Tensor | None = None
    rows: int = 0
    samples: list[torch.Tensor] = field(default_factory=list)
    probe: torch.Tensor | None = None


class _ProbeDone(Exception):
    """Ends a fold-check run once the group's input has been seen."""


@torch.no_grad()
def awq(
    model: nn.Module,
    batches: Iterable[Any],
    include: str | Sequence[str] | None = None,
    grid: int = 20,
    max_tokens: int = 512,
    *,
    progress: bool = True,
) -> nn.Module:
    """Scale the weight columns of the not yet frozen, weight-quantized QLinears of `model`
    by activation-aware factors, folded into the op before each; returns `model`.

    Call after `quantize(model, weights=...)` and before `freeze`. `batches` (tensors, or
    tuples / dicts of model arguments) are run in float. Linears reading one input tensor (q/k/v
    after a norm, gate/up after a norm, down after up, o after v where shapes match) share one
    scale; `grid` alphas in [0, 1] are tried on up to `max_tokens` input rows per group. With
    `include=None` every linear whose input cannot be folded (a nonlinearity such as GELU,
    attention or a residual lies between it and the op before) keeps round-to-nearest, with one
    warning; with `include` (fnmatch patterns of qualified names) such a linear is a ValueError.
    """
    patterns = _check_arguments(include, grid, max_tokens, progress)
    batches = list(batches)
    if not batches:
        raise ValueError("awq() needs at least one calibration batch")
    targets = _targets(model, patterns)
    with _float_model(targets):
        groups, reference = _record(model, batches, targets, max_tokens, progress)
        candidates = _distinct_producers(groups)
        if _all_exact(model, batches[0], candidates, reference):  # one run where all fold
            foldable = candidates
        else:
            paths = [group for group in candidates if _input_scales(model, batches[0], group)]
            foldable = _exact_together(model, batches[0], paths, reference)
    _report_unfoldable(groups, foldable, include)
    bar = progress_bar(foldable, desc="awq", total=len(foldable), unit="group", progress=progress)
    for group in bar:
        _apply(group, _search(group, grid))
    return model


def _check_arguments(
    include: str | Sequence[str] | None, grid: int, max_tokens: int, progress: bool
) -> tuple[str, ...]:
    """Every argument checked before the model is touched; returns the include patterns."""
    patterns = ("*",) if include is None else (include,) if isinstance(include, str) else include
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"include must be None, a str or a list of str, got {include!r}")
    for name, value, least in (("grid", grid, 2), ("max_tokens", max_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    return tuple(patterns)


def _targets(model: nn.Module, patterns: tuple[str, ...]) -> dict[QLinear, str]:
    """The weight-quantized, not yet frozen QLinears whose names match `patterns`."""
    targets = {
        module: name
        for name, module in model.named_modules()
        if isinstance(module, QLinear)
        and module.qconfig.weights is not None
        and module.float_weight is not None
        and any(fnmatchcase(name, pattern) for pattern in patterns)
    }
    for module, name in targets.items():
        if module.qconfig.input_smoothing or module.qconfig.input_rotation is not None:
            raise ValueError(
                f"module {name!r} already smooths or rotates its input: call awq() before "
                "smooth() and rotate()"
            )
    if not targets:
        raise ValueError(
            f"awq() found no QLinear with quantized weights and a float weight matching "
            f"{list(patterns)!r}: call it after quantize(model, weights=...) and before freeze()"
        )
    return targets


@contextmanager
def _float_model(targets: Iterable[QLinear]) -> Iterator[None]:
    """Inside, the targets run on their float weights and activations (the float function AWQ
    measures inputs on and keeps exact): their weight qtype is unset, then restored."""
    configs = {module: module.qconfig for module in targets}
    for module, config in configs.items():
        module.qconfig = replace(config, weights=None)
    try:
        with float_activations():
            yield
    finally:
        for module, config in configs.items():
            module.qconfig = config


def _output_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The float parameters that scale a module's output channels (weight, bias), or None.

    A linear's rows, or the 1-D affine weight of a norm; whether that really scales the output
    channel by channel is checked by running the model (`_folds`).
    """
    weight = (
        module.float_weight if isinstance(module, QModuleMixin) else getattr(module, "weight", None)
    )
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return None
    if isinstance(module, nn.Linear) or (weight.dim() == 1 and not list(module.children())):
        bias = getattr(module, "bias", None)
        return weight, bias if isinstance(bias, torch.Tensor) else None
    return None


def _record(
    model: nn.Module,
    batches: list[Any],
    targets: dict[QLinear, str],
    max_tokens: int,
    progress: bool,
) -> tuple[list[_Group], list[torch.Tensor]]:
    """Run the batches once: group the targets by input tensor, take as each group's producer
    the norm or linear run last before it when its output has the input's width, and gather
    mean|x| and sampled input rows. Also returns the model's output tensors on the first batch."""
    by_input: dict[int, tuple[weakref.ref, _Group]] = {}
    last: list[tuple[str, nn.Module, int]] = []  # the last norm or linear run: name, module, width
    names = {module: name for name, module in model.named_modules()}
    groups: dict[QLinear, _Group] = {}
    first_outputs: list[torch.Tensor] = []
    first_batch = [True]  # set until the model's first forward returns
    rows_per_batch = -(-max_tokens // len(batches))

    def remember(module: nn.Module, args: tuple, output: Any) -> None:
        if first_batch[0] and isinstance(output, torch.Tensor):
            last[:] = [(names[module], module, output.shape[-1])]

    def observe(module: QLinear, args: tuple) -> None:
        x = args[0]
        if first_batch[0] and module not in groups:
            seen = by_input.get(id(x))
            if seen is None or seen[0]() is not x:
                before = last[0] if last and last[0][2] == x.shape[-1] else None
                seen = (weakref.ref(x), _Group([], before and before[:2]))
                by_input[id(x)] = seen
            seen[1].members.append((targets[module], module))
            groups[module] = seen[1]
        group = groups.get(module)
        if group is None or group.members[0][1] is not module:
            return  # one record per group: its members read the same tensor
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        abs_sum = rows.abs().sum(0)
        group.abs_sum = abs_sum if group.abs_sum is None else group.abs_sum + abs_sum
        group.rows += rows.shape[0]
        group.samples.append(_spread_rows(rows, rows_per_batch))
        if group.probe is None:
            group.probe = _spread_rows(rows, PROBE_ROWS)

    def keep_output(module: nn.Module, args: tuple, output: Any) -> None:
        if first_batch[0]:
            first_outputs.extend(t.detach().float().clone() for t in _tensors(output))
            first_batch[0] = False

    candidates = [m for m in model.modules() if _output_weights(m) is not None]
    handles = [m.register_forward_hook(remember) for m in candidates]
    handles += [m.register_forward_pre_hook(observe) for m in targets]
    handles.append(model.register_forward_hook(keep_output))
    try:
        run_batches(model, batches, progress)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(groups.values())), first_outputs


def _spread_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """Up to `count` rows spread evenly over `rows` (first and last included)."""
    if rows.shape[0] <= count:
        return rows.clone()
    index = torch.linspace(0, rows.shape[0] - 1, count).round().long()
    return rows[index].clone()


def _tensors(output: Any) -> list[torch.Tensor]:
    """The float tensors of a model output (a tensor, or tuples / dicts / ModelOutputs of them)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    values = output.values() if isinstance(output, Mapping) else output
    if isinstance(values, (tuple, list)) or isinstance(output, Mapping):
        return [t for value in values for t in _tensors(value)]
    return []


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp(min=1e-30)).item()


def _tolerance(group: _Group) -> float:
    """The relative error a fold check accepts for the group's weight dtype."""
    dtype = group.members[0][1].float_weight.dtype
    return max(FOLD_TOLERANCE, FOLD_EPSILONS * torch.finfo(dtype).eps)


def _test_factors(group: _Group) -> torch.Tensor:
    """Random factors in [0.5, 2] for a fold check, the same on every run (seeded)."""
    generator = torch.Generator().manual_seed(len(group.members) * 7919 + group.probe.shape[-1])
    return torch.empty(group.probe.shape[-1]).uniform_(0.5, 2.0, generator=generator)


@contextmanager
def _scaled(groups: Iterable[_Group]) -> Iterator[None]:
    """Each group's producer output multiplied by its test factors and its members' columns
    divided by them (the model computes the same function where the fold is exact); undone
    on exit."""
    saved = []
    for group in groups:
        modules = [group.producer[1]] + [module for _, module in group.members]
        saved += [
            (p, p.detach().clone()) for m in modules for p in _output_weights(m) if p is not None
        ]
        _apply(group, 1 / _test_factors(group))
    try:
        yield
    finally:
        with torch.no_grad():
            for parameter, value in reversed(saved):  # a module in two groups: first copy last
                parameter.copy_(value)


def _distinct_producers(groups: list[_Group]) -> list[_Group]:
    """The groups with a producer that no earlier group folds into (one fold per producer)."""
    used: set[nn.Module] = set()
    distinct = []
    for group in groups:
        if group.producer is not None and group.producer[1] not in used:
            used.add(group.producer[1])
            distinct.append(group)
    return distinct


def _input_scales(model: nn.Module, batch: Any, group: _Group) -> bool:
    """Whether scaling the producer's output channels scales the group's input alike (no
    nonlinearity or channel mixing between them); the run stops at the group's input."""
    seen: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        seen.append(_spread_rows(x.reshape(-1, x.shape[-1]).float(), PROBE_ROWS))
        raise _ProbeDone

    handle = group.members[0][1].register_forward_pre_hook(capture)
    try:
        with _scaled([group]):
            run_batches(model, [batch])
    except _ProbeDone:
        pass
    finally:
        handle.remove()
    expected = group.probe * _test_factors(group)
    return bool(seen) and _relative_error(seen[0], expected) <= _tolerance(group)


def _all_exact(
    model: nn.Module, batch: Any, groups: list[_Group], reference: list[torch.Tensor]
) -> bool:
    """Whether, all folds applied at once, every group's input is its producer's output times
    the test factors and the model's output is unchanged."""
    seen: dict[_Group, torch.Tensor] = {}

    def capture(group: _Group):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            seen.setdefault(group, _spread_rows(x.reshape(-1, x.shape[-1]).float(), PROBE_ROWS))

        return hook

    handles = [group.members[0][1].register_forward_pre_hook(capture(group)) for group in groups]
    try:
        outputs_exact = _exact_together(model, batch, groups, reference, split=False)
    finally:
        for handle in handles:
            handle.remove()
    return bool(outputs_exact) and all(
        group in seen
        and _relative_error(seen[group], group.probe * _test_factors(group)) <= _tolerance(group)
        for group in groups
    )


def _exact_together(
    model: nn.Module,
    batch: Any,
    groups: list[_Group],
    reference: list[torch.Tensor],
    split: bool = True,
) -> list[_Group]:
    """The groups whose folds leave the model's output unchanged (a norm whose output also
    feeds a residual, as in BERT, does not): all at once, then (with `split`) halving the set
    on a mismatch."""
    if not groups:
        return []
    outputs: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda m, a, out: outputs.extend(_tensors(out)))
    try:
        with _scaled(groups):
            run_batches(model, [batch])
    finally:
        hook.remove()
    same = len(outputs) == len(reference) and all(
        _relative_error(out.detach().float(), ref) <= max(map(_tolerance, groups))
        for out, ref in zip(outputs, reference, strict=True)
    )
    if same:
        return groups
    if len(groups) == 1 or not split:
        return []
    half = len(groups) // 2
    return _exact_together(model, batch, groups[:half], reference) + _exact_together(
        model, batch, groups[half:], reference
    )


def _apply(group: _Group, factors: torch.Tensor) -> None:
    """Multiply the members' weight columns by `factors` and divide the producer's output
    channels (a linear's rows and bias, a norm's weight and bias) by them."""
    weight, bias = _output_weights(group.producer[1])
    weight.div_(
        factors.to(weight.dtype)[:, None] if weight.dim() == 2 else factors.to(weight.dtype)
    )
    if bias is not None:
        bias.div_(factors.to(bias.dtype))
    for _, module in group.members:
        module.float_weight.mul_(factors.to(module.float_weight.dtype))


def _roundtrip(module: QLinear, weight: torch.Tensor) -> torch.Tensor:
    """`weight` quantized and dequantized as `module` will quantize its own at freeze."""
    config = module.qconfig
    return (
        layout_for(config.weights).quantize(weight, config.weights, config.group_size).dequantize()
    )


def _search(group: _Group, grid: int) -> torch.Tensor:
    """The s = mean|x|^alpha, alpha on `grid` points of [0, 1], with the least squared output
    error of the group's quantized linears on the sampled inputs."""
    x = torch.cat(group.samples)
    mean_abs = group.abs_sum / group.rows
    weights = [module.float_weight.detach() for _, module in group.members]
    references = [x @ weight.float().T for weight in weights]
    best, best_error = torch.ones_like(mean_abs), float("inf")
    for alpha in torch.linspace(0, 1, grid).tolist():
        factors = mean_abs.pow(alpha).clamp(min=MIN_FACTOR)
        factors = factors / (factors.max() * factors.min()).sqrt()
        scaled_x = x / factors
        error = 0.0
        for (_, module), weight, reference in zip(group.members, weights, references, strict=True):
            quantized = _roundtrip(module, weight * factors.to(weight.dtype)).float()
            error += (scaled_x @ quantized.T - reference).square().sum().item()
        if error < best_error:
            best, best_error = factors, error
    return best


def _report_unfoldable(
    groups: list[_Group], foldable: list[_Group], include: str | Sequence[str] | None
) -> None:
    """Warn (all linears asked for) or raise (named ones) about linears that keep plain
    rounding because nothing before them can take 1/s."""
    kept = set(foldable)
    names = [name for group in groups if group not in kept for name, _ in group.members]
    if not names:
        return
    listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    reason = (
        "their input is not a per-channel scaling of a norm's or linear's output that only "
        "they read (a nonlinearity, attention or a residual is in between)"
    )
    if include is not None or not foldable:
        raise ValueError(f"awq() cannot fold scales for {listed}: {reason}")
    warnings.warn(
        f"awq() keeps round-to-nearest for {len(names)} linears ({listed}): {reason}",
        stacklevel=3,
    )
