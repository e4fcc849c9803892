"""torch.library wiring of the fused loss ops: fake kernels, autograd, and the backends.

Every fused op has the same shape of contract (see reference.py for the semantics):
`<loss>_fused(inputs..., scalars...) -> (per_sample_loss, grad_0, grad_1, ...)`. The
forward kernel writes the per-sample loss *and* the input gradients in one pass; autograd
only multiplies the saved gradients by the upstream per-sample gradient. The C++ ops
(`fastdistill::<loss>_fused`, CPU and CUDA kernels) come from `fastdistill._C`; the
Triton launchers are wrapped here as opaque custom ops `fastdistill::<loss>_fused_triton`,
so `torch.compile(fullgraph=True)` keeps either kind in the graph.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import reference
from .layout import as_rows, empty_grad


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class OpSpec:
    """Static facts of one fused loss op.

    grad_inputs: which leading tensor inputs the op returns gradients for, in order.
    negated_inputs: inputs whose gradient is minus that of another input (index -> source),
    so the kernel need not write it (DSM: d/dtarget = -d/dpred).
    """

    name: str
    num_tensor_inputs: int
    grad_inputs: tuple[int, ...]
    negated_inputs: tuple[tuple[int, int], ...] = ()


SPECS = {
    "sid": OpSpec("sid", 3, (0, 1, 2)),
    "sim": OpSpec("sim", 3, (0, 1, 2)),
    "dmd": OpSpec("dmd", 3, (0,)),
    "dsm": OpSpec("dsm", 2, (0,), negated_inputs=((1, 0),)),
}


def _make_fake(spec: OpSpec) -> Callable:
    def fake(*args):
        x = args[0]
        loss = x.new_empty((x.shape[0],), dtype=_acc_dtype(x.dtype))
        rows = as_rows(*args[:spec.num_tensor_inputs])
        return (loss, *(empty_grad(rows[i]) for i in spec.grad_inputs))

    return fake


def _upstream_multiplier(grad_loss: torch.Tensor, saved_dim: int) -> Optional[torch.Tensor]:
    """The per-sample upstream gradient shaped to multiply a saved gradient, or None when it is all ones.

    The ones check is a cheap host-side test on B values, done once per backward and only on
    plain CPU tensors in eager mode: on CUDA it would force a device sync, and while tracing
    (torch.compile, AOT autograd, make_fx: subclass tensors or an active dispatch mode) it
    would bake a data-dependent branch into the graph.
    """
    eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
    if eager and grad_loss.device.type == "cpu" and bool((grad_loss == 1).all()):
        return None
    return grad_loss.reshape(-1, *([1] * (saved_dim - 1)))


def _make_autograd(spec: OpSpec) -> tuple[Callable, Callable]:
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])
        # The gradient outputs are never differentiated: without this, autograd would fill
        # (and write) a full-size zero tensor for each of them on every backward.
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, *unused_grads_of_grads):
        grads: list[Optional[torch.Tensor]] = [None] * len(ctx.needs_input_grad)
        if grad_loss is None:
            return tuple(grads)
        saved = ctx.saved_tensors
        multiplier = _upstream_multiplier(grad_loss, saved[0].dim())

        def scaled(t: torch.Tensor) -> torch.Tensor:
            return t if multiplier is None else t * multiplier.to(t.dtype)

        for slot, index in enumerate(spec.grad_inputs):
            if ctx.needs_input_grad[index]:
                grads[index] = scaled(saved[slot])
        for index, source in spec.negated_inputs:
            if ctx.needs_input_grad[index]:
                grads[index] = -scaled(saved[spec.grad_inputs.index(source)])
        return tuple(grads)

    return setup_context, backward


def _register(qualname: str, spec: OpSpec) -> None:
    torch.library.register_fake(qualname)(_make_fake(spec))
    setup_context, backward = _make_autograd(spec)
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


# --- the C++ extension ------------------------------------------------------------------

def _load_extension() -> tuple[bool, str]:
    try:
        importlib.import_module("fastdistill._C")
    except ImportError as exc:  # not built, or built against another torch
        return False, f"fastdistill._C could not be imported ({exc}); build it with `pip install --no-build-isolation -e .`"
    for name, spec in SPECS.items():
        _register(f"fastdistill::{name}_fused", spec)
    return True, "fastdistill._C loaded"


EXTENSION_AVAILABLE, EXTENSION_REASON = _load_extension()


def extension_has_kernel(device_type: str) -> bool:
    """Whether `_C` was built with kernels for this dispatch key ('CPU' or 'CUDA')."""
    return EXTENSION_AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("fastdistill::sid_fused", device_type)


# --- Triton ------------------------------------------------------------------------------

def _triton_module():
    return importlib.import_module("fastdistill.ops.triton_kernels")


def triton_status(device_type: str) -> tuple[bool, str]:
    try:
        return _triton_module().is_available(device_type)
    except ImportError as exc:
        return False, f"triton kernels unavailable ({exc})"


def _define_triton_ops() -> None:
    """Wrap the Triton launchers as opaque custom ops (testable on CPU under TRITON_INTERPRET=1)."""

    @torch.library.custom_op("fastdistill::sid_fused_triton", mutates_args=())
    def sid_fused_triton(
        y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, weight: Optional[torch.Tensor], alpha: float, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _triton_module().sid_fused(y, y_real, y_fake, weight, alpha, scale)

    @torch.library.custom_op("fastdistill::sim_fused_triton", mutates_args=())
    def sim_fused_triton(
        y: torch.Tensor,
        y_real: torch.Tensor,
        y_fake: torch.Tensor,
        weight: Optional[torch.Tensor],
        c: float,
        pseudo_huber: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _triton_module().sim_fused(y, y_real, y_fake, weight, c, pseudo_huber, scale)

    @torch.library.custom_op("fastdistill::dmd_fused_triton", mutates_args=())
    def dmd_fused_triton(
        y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, weight: Optional[torch.Tensor], scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _triton_module().dmd_fused(y, y_real, y_fake, weight, scale)

    @torch.library.custom_op("fastdistill::dsm_fused_triton", mutates_args=())
    def dsm_fused_triton(
        pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, sigma_data: float, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _triton_module().dsm_fused(pred, target, sigma, sigma_data, scale)

    for name, spec in SPECS.items():
        _register(f"fastdistill::{name}_fused_triton", spec)


_define_triton_ops()


# --- backends ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """One implementation of the four losses; each callable returns the per-sample loss (B,)."""

    name: str
    sid: Callable
    sim: Callable
    dmd: Callable
    dsm: Callable


def _fused_backend(name: str, namespace_suffix: str) -> Backend:
    def op(loss: str):
        def call(*args):  # the kernels take any layout (ops/layout.py)
            return getattr(torch.ops.fastdistill, f"{loss}_fused{namespace_suffix}")(*args)[0]

        return call

    return Backend(name, *(op(loss) for loss in ("sid", "sim", "dmd", "dsm")))


BACKENDS = {
    "reference": Backend("reference", reference.sid, reference.sim, reference.dmd, reference.dsm),
    "cpp": _fused_backend("cpp", ""),
    "cuda": _fused_backend("cuda", ""),
    "triton": _fused_backend("triton", "_triton"),
}


def backend_status(name: str, device_type: str) -> tuple[bool, str]:
    """Can backend `name` run on tensors of `device_type` here? (available, reason)."""
    if name == "reference":
        return True, "pure PyTorch, always available"
    if name == "cpp":
        if device_type != "cpu":
            return False, "the cpp backend runs on CPU tensors only"
        return (True, "fused C++ CPU kernel") if extension_has_kernel("CPU") else (False, EXTENSION_REASON)
    if name == "cuda":
        if device_type != "cuda":
            return False, "the cuda backend runs on CUDA tensors only"
        if not extension_has_kernel("CUDA"):
            reason = EXTENSION_REASON if not EXTENSION_AVAILABLE else "fastdistill._C was built without CUDA kernels"
            return False, reason
        return True, "fused CUDA kernel"
    if name == "triton":
        return triton_status(device_type) if device_type in ("cuda", "cpu") else (False, f"no triton for {device_type}")
    raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)} or 'auto'")


AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


def resolve_backend(requested: str, device_type: str) -> Backend:
    """The backend for `requested` ('auto' or a name) on `device_type`.

    'auto' means `$FASTDISTILL_BACKEND` when set, else the fastest available backend for
    the device. A named backend that cannot run here is an error that says why.
    """
    return BACKENDS[_resolve_backend_name(requested, device_type)]


@torch.compiler.assume_constant_result
def _resolve_backend_name(requested: str, device_type: str) -> str:
    # A compile-time constant: torch.compile evaluates it once instead of tracing the
    # environment lookups and lazy imports inside.
    if requested == "auto":
        requested = os.environ.get("FASTDISTILL_BACKEND", "auto") or "auto"
    if requested == "auto":
        for name in AUTO_ORDER.get(device_type, ("reference",)):
            if backend_status(name, device_type)[0]:
                return name
    ok, reason = backend_status(requested, device_type)
    if not ok:
        raise RuntimeError(f"backend {requested!r} is not available for {device_type} tensors: {reason}")
    return requested
