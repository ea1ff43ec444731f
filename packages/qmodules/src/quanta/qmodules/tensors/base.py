"""QTensor: the base of every quantized tensor subclass.

A subclass declares the names of its inner tensors (`inner_names`) and of its constant
attributes (`attribute_names`); flatten/unflatten, repr, device and dtype moves, detach,
deepcopy and pickling are derived from those names here. Ops are added per class with
`implements(...)`; anything else is computed on the dequantized tensor. Moves and views
behave the same under torch.inference_mode() as under torch.no_grad().
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map_only

import quanta.qkernels  # noqa: F401  (registers torch.ops.quanta.*)
from quanta.qmodules.tensors.straight_through import needs_weight_grad

aten = torch.ops.aten

Handler = Callable[[Any, tuple, dict], Any]


class _QTensorMeta(type(torch.Tensor)):
    """Makes `type(param)(qtensor, requires_grad=...)` a parameter, as for nn.Parameter.

    accelerate's `set_module_tensor_to_device`, which its offload hooks call to move each
    parameter to and from the meta device, rebuilds a parameter as
    `type(param)(new_value, requires_grad=...)`; a Parameter wrapping a QTensor has the
    QTensor's type, so that call (one QTensor of the class, at most `requires_grad`) returns
    `nn.Parameter(qtensor, ...)`. Any other call builds a QTensor from its parts.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], cls) and kwargs.keys() <= {"requires_grad"}:
            return torch.nn.Parameter(args[0], **kwargs)
        return super().__call__(*args, **kwargs)


class QTensor(torch.Tensor, metaclass=_QTensorMeta):
    """A quantized tensor: codes plus the parameters that map them back to floats.

    Its logical shape and dtype are those of the float tensor it stands for; the inner
    tensors hold the canonical, device-independent layout.
    """

    inner_names: ClassVar[tuple[str, ...]] = ()
    # inner tensors stored in the float dtype (converted by .to(dtype)); the rest keep theirs
    float_inner_names: ClassVar[tuple[str, ...]] = ("scale",)
    attribute_names: ClassVar[tuple[str, ...]] = ()
    _dispatch_table: ClassVar[dict[Any, Handler]] = {}
    _function_table: ClassVar[dict[Any, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._dispatch_table = {}
        cls._function_table = {}

    @classmethod
    def _make_wrapper(cls, shape: Any, dtype: torch.dtype, codes: torch.Tensor) -> QTensor:
        """The outer tensor: logical shape, the weight's float dtype, the codes' device."""
        return torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=dtype, device=codes.device, requires_grad=False
        )

    @classmethod
    def implements(cls, *ops: Any) -> Callable[[Handler], Handler]:
        """Register `handler(func, args, kwargs)` for aten overloads or torch functions."""

        def register(handler: Handler) -> Handler:
            for op in ops:
                table = (
                    cls._dispatch_table
                    if isinstance(op, torch._ops.OpOverload)
                    else cls._function_table
                )
                table[op] = handler
            return handler

        return register

    @classmethod
    def _handler(cls, table_name: str, func: Any) -> Handler | None:
        for klass in cls.__mro__:
            table = klass.__dict__.get(table_name)
            if table is not None and func in table:
                return table[func]
        return None

    # --- what subclasses provide -------------------------------------------------------

    def dequantize(self) -> torch.Tensor:
        """The float tensor these codes stand for, in the logical shape and dtype."""
        raise NotImplementedError

    # --- derived from the declared names ------------------------------------------------

    def inner_tensors(self) -> dict[str, torch.Tensor]:
        """The inner tensors by declared name (the canonical layout)."""
        return {name: getattr(self, name) for name in self.inner_names}

    def attributes(self) -> dict[str, Any]:
        """The constant attributes by declared name."""
        return {name: getattr(self, name) for name in self.attribute_names}

    def _rebuild_with(
        self, fn: Callable[[str, torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None
    ) -> QTensor:
        """A copy with `fn` applied to each inner tensor and, for classes that keep their float
        dtype as the `float_dtype` attribute, that set to `dtype` when given."""
        inner = {name: fn(name, tensor) for name, tensor in self.inner_tensors().items()}
        attributes = self.attributes()
        if dtype is not None and "float_dtype" in attributes:
            attributes["float_dtype"] = dtype
        return type(self)(**inner, **attributes, shape=self.shape, **self._kept_forms(inner))

    def _kept_forms(self, inner: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Derived kernel forms a rebuild from `inner` keeps rather than builds again (by
        constructor argument name); none by default."""
        return {}

    def __tensor_flatten__(self) -> tuple[list[str], dict[str, Any]]:
        return list(self.inner_names), self.attributes()

    @classmethod
    def __tensor_unflatten__(
        cls, inner_tensors: dict, attributes: dict, outer_size: Any, outer_stride: Any
    ) -> QTensor:
        return cls(**inner_tensors, **attributes, shape=outer_size)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        attributes = "".join(f", {name}={value}" for name, value in self.attributes().items())
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"device={self.device}{attributes})"
        )

    def _stable_hash_for_caching(self) -> str:
        """Metadata key for torch.compile's AOT autograd cache (not the values)."""
        inner = [(n, t.shape, t.dtype, t.device.type) for n, t in self.inner_tensors().items()]
        key = repr((type(self).__qualname__, tuple(self.shape), self.attributes(), inner))
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def __reduce_ex__(self, protocol: int) -> tuple:
        inner = {name: tensor.detach() for name, tensor in self.inner_tensors().items()}
        is_param = isinstance(self, torch.nn.Parameter)
        return _rebuild, (type(self), inner, self.attributes(), tuple(self.shape), is_param)

    def __deepcopy__(self, memo: dict) -> QTensor:
        if id(self) in memo:
            return memo[id(self)]
        inner = {n: copy.deepcopy(t, memo) for n, t in self.inner_tensors().items()}
        is_param = isinstance(self, torch.nn.Parameter)
        result = _rebuild(type(self), inner, self.attributes(), tuple(self.shape), is_param)
        memo[id(self)] = result
        return result

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        handler = cls._handler("_function_table", func)
        if handler is not None:
            return handler(func, args, kwargs)
        # No conversion of results into the subclass (unlike torch.Tensor's default).
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if _views_a_normal_tensor_in_inference_mode(func, args):
            # autograd gives the view its base's version counter, which an inference tensor
            # (any tensor created in inference mode) lacks: build it as torch would, a normal one
            with torch.inference_mode(False), torch.no_grad():
                return cls._dispatch(func, args, kwargs)
        return cls._dispatch(func, args, kwargs)

    @classmethod
    def _dispatch(cls, func: Any, args: tuple, kwargs: dict) -> Any:
        handler = cls._handler("_dispatch_table", func)
        if handler is not None:
            return handler(func, args, kwargs)
        if func._schema.is_mutable:
            raise NotImplementedError(
                f"{func} would modify a quantized tensor in place; dequantize() it first"
            )
        return dequantized_call(func, args, kwargs)


class QSymmetricTensor(QTensor):
    """The base of 8-bit codes (int8 or float8) with a symmetric scale that broadcasts against
    them: weights (QBytesTensor) and activations (QActivationTensor) share this storage."""

    inner_names = ("codes", "scale")
    attribute_names = ("qtype",)

    @staticmethod
    def __new__(cls, codes: torch.Tensor, scale: torch.Tensor, qtype: Any, shape: Any):
        return cls._make_wrapper(shape, scale.dtype, codes)

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, qtype: Any, shape: Any):
        self.codes = codes
        self.scale = scale
        self.qtype = qtype


def _views_a_normal_tensor_in_inference_mode(func: Any, args: tuple) -> bool:
    """Whether `func` makes a view of a normal (non-inference) tensor inside inference mode:
    detach (so nn.Parameter(qtensor)), t, slices... of a QTensor created outside it."""
    return torch.is_inference_mode_enabled() and func.is_view and not args[0].is_inference()


def dequantized_call(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run `func` on the arguments with every QTensor dequantized (the generic fallback)."""
    args, kwargs = tree_map_only(QTensor, lambda t: t.dequantize(), (args, kwargs))
    return func(*args, **kwargs)


def kernel_call(op: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Call a quanta op; with gradients off, below its autograd key.

    The autograd kernel of a quanta linear op is Python (torch.library.register_autograd): skipping
    it when no gradient can be wanted saves ~0.07 ms of a one-token call on cold weights.
    torch.compile traces the plain call.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def linear_arguments(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """F.linear's arguments by name, however they were passed."""
    return input, weight, bias


def _rebuild(
    cls: type[QTensor], inner: dict, attributes: dict, shape: tuple, is_param: bool
) -> QTensor:
    tensor = cls(**inner, **attributes, shape=torch.Size(shape))
    return torch.nn.Parameter(tensor, requires_grad=False) if is_param else tensor


@QTensor.implements(aten.detach.default, aten.alias.default, aten.clone.default)
def _apply_to_inner(func: Any, args: tuple, kwargs: dict) -> QTensor:
    kwargs = {k: v for k, v in kwargs.items() if k != "memory_format"}
    return args[0]._rebuild_with(lambda _, tensor: func(tensor, *args[1:], **kwargs))


@QTensor.implements(aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten.to.other)
def _to(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """`.to()` as under no_grad: a copy by _to_copy below, or the tensor itself when unchanged.

    aten.to is CompositeImplicitAutograd: the autograd key decomposes it; inference mode skips
    that key, so there it arrives here whole and is decomposed the same way.
    """
    return func.decompose(*args, **kwargs)


@QTensor.implements(aten._to_copy.default)
def _to_copy(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """Device moves carry every inner tensor; a float dtype change converts the scales."""
    self = args[0]
    dtype = kwargs.get("dtype") or self.dtype
    if not dtype.is_floating_point or dtype.itemsize < 2:
        return func(self.dequantize(), **kwargs)
    device = kwargs.get("device") or self.device
    non_blocking = kwargs.get("non_blocking", False)

    def move(name: str, tensor: torch.Tensor) -> torch.Tensor:
        target = dtype if name in self.float_inner_names else tensor.dtype
        return tensor.to(device=device, dtype=target, non_blocking=non_blocking, copy=True)

    return self._rebuild_with(move, dtype)


@QTensor.implements(torch.Tensor.nbytes.__get__)
def _nbytes(func: Any, args: tuple, kwargs: dict) -> int:
    """The bytes stored (codes, scales, zero points), not those of the float tensor."""
    return sum(tensor.nbytes for tensor in args[0].inner_tensors().values())


@QTensor.implements(torch.Tensor.element_size)
def _element_size(func: Any, args: tuple, kwargs: dict) -> float:
    """Stored bytes per logical element (fractional for packed codes), so that the usual
    `numel() * element_size()` accounting (Transformers' get_memory_footprint) is true."""
    self = args[0]
    return self.nbytes / max(self.numel(), 1)


@QTensor.implements(F.conv2d)
def _conv2d(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """Convolution runs on the dequantized weight (no quantized conv kernel yet)."""
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    if needs_weight_grad(weight):
        # QAT: let autograd record aten.convolution on the QTensor; its weight gradient then
        # reaches the float weight (straight through), and __torch_dispatch__ dequantizes
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)
    return dequantized_call(func, args, kwargs)
