"""Triton fused kernels for the four distillation losses (SiD, SIM, DMD, DSM).

Semantics are exactly those of `fastdistill.ops.reference` (same argument names); every
launcher returns the per-sample loss, already multiplied by `scale`, *and* the gradients of
that scaled per-sample loss with respect to the inputs (the caller multiplies them by the
upstream gradient):

    sid_fused(y, y_real, y_fake, weight, alpha, scale)          -> (loss, grad_y, grad_y_real, grad_y_fake)
    sim_fused(y, y_real, y_fake, weight, c, pseudo_huber, scale) -> (loss, grad_y, grad_y_real, grad_y_fake)
    dmd_fused(y, y_real, y_fake, weight, scale)                 -> (loss, grad_y)
    dsm_fused(pred, target, sigma, sigma_data, scale)           -> (loss, grad_pred)   # grad_target = -grad_pred

Conventions: inputs (B, ...) of float16/bfloat16/float32/float64; math in fp32 (fp64 when an
input is fp64, so float64 gradcheck works); the loss is fp32 (fp64 for fp64 `y`/`pred`); the
gradients are in the dtype, shape and layout of their input (ops/layout.py: contiguous unless
each sample lies as one dense block, as under channels_last). `weight=None` means
`w_b = max(mean_i |y - y_real|, 1e-5)` computed inside the kernel (a constant, no gradient);
a given weight is a (B,) tensor used as is. A sample with a NaN, +inf or -inf in any input
(y, y_real, y_fake; DSM: pred, target), or whose given weight (DSM: sigma_b) is not finite,
gets loss 0 and zero gradients (the rule of docs/losses.md). Empty batches (B == 0) or empty
samples (numel per sample == 0) launch nothing and return zero losses (the public API rejects
empty samples before they get here).

Kernel design: one program per sample, two passes over it. Pass 1 streams y, y_real, y_fake in
BLOCK chunks and accumulates every per-sample sum (sum|y - yr|, a count of non-finite
elements, the loss sums: the finiteness test rides on the loads already made);
the program then forms the loss and the per-sample gradient coefficients (closed forms of
docs/algorithms.md sections 2-4); pass 2 re-reads the sample (from L2) and writes the gradients.
DMD's pass 2 does not read y. When the batch is too small to fill the GPU and samples are
large, the sample is split over a second grid dimension: a statistics kernel writes partial
sums, and a gradient kernel re-reduces the (few) partials of its sample before writing its
chunk. Offsets are int64 per sample; loads are cast to the math dtype at once.

Interpreter caveats (`TRITON_INTERPRET=1`, the only way to run these kernels on CPU tensors):
- the variable must be set before this module is imported (kernels are decorated at import;
  `triton` itself may have been imported earlier);
- bf16 arithmetic is wrong in the interpreter, so every load is cast to fp32 at once (done
  here; bf16/fp16 gradients are rounded to the output dtype on store);
- multi-config autotuning fails, so a single fixed config is used when interpreting; on GPU
  the fused kernel is autotuned over a few BLOCK/num_warps configs keyed on N;
- the interpreter costs grow with the number of program instances and BLOCK-sized numpy
  steps: it is a correctness tool, far slower than the reference path; never a CPU backend.
"""
from __future__ import annotations

import functools
import math
import os
import struct
from typing import Optional

import torch

from .layout import as_rows, empty_grad

try:  # triton is optional: the backend selector asks `is_available()` for the reason
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as exc:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _IMPORT_ERROR = exc


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# Fixed when this module is imported: that is when the kernels are decorated.
INTERPRET = triton is not None and _env_interpret()

WEIGHT_FLOOR = 1e-5

# Kernel modes (constexpr).
_SID, _SIM, _DMD, _DSM = 0, 1, 2, 3

# Config used under the interpreter (one config only) and by the split kernels.
_INTERP_BLOCK = 1024
_SPLIT_BLOCK = 2048
_SPLIT_WARPS = 8
# Split a sample over several programs only when it is at least this large.
_SPLIT_MIN_N = 1 << 16
_SPLIT_CHUNK_MIN = 1 << 14
# Tests set this to force the split path (an int >= 2) under the interpreter.
_FORCE_SPLITS: Optional[int] = None
_F32 = struct.Struct("f")


if triton is not None:

    @triton.jit
    def _load_math(ptr, offs, mask, FP64: tl.constexpr):
        x = tl.load(ptr + offs, mask=mask, other=0.0)
        if FP64:
            x = x.to(tl.float64)
        else:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _to_math(x, FP64: tl.constexpr):
        if FP64:
            x = tl.cast(x, tl.float64)
        else:
            x = tl.cast(x, tl.float32)
        return x

    @triton.jit
    def _scalar(hi, lo, FP64: tl.constexpr):
        # A host float arrives as hi = fp32(x), lo = fp32(x - hi): fp32 kernel arguments (and the
        # interpreter's fp32 constants) would otherwise round it before fp64 math sees it.
        if FP64:
            x = tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
        else:
            x = tl.cast(hi, tl.float32)
        return x

    @triton.jit
    def _finite(x):
        # True where x is neither NaN (every comparison with NaN is false) nor +-inf.
        return tl.abs(x) < float("inf")

    @triton.jit
    def _nonfinite(x):
        return (x != x) | (tl.abs(x) == float("inf"))

    @triton.jit
    def _weight_floor(FP64: tl.constexpr):
        # an exact 1e-5 in the math dtype (a bare literal would be rounded to fp32 first)
        if FP64:
            f = tl.full([], 1e-5, tl.float64)
        else:
            f = tl.full([], 1e-5, tl.float32)
        return f

    @triton.jit
    def _accumulate(
        y_ptr, yr_ptr, yf_ptr, lo, hi, p0h, p0l,
        MODE: tl.constexpr, NEED_ABS: tl.constexpr, PH: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """Sums over elements [lo, hi) of one sample (pointers already at the sample start).

        Returns (sum|y - yr|, count of elements with a non-finite input, s1, s2):
        SiD s1 = sum delta*(a - alpha*delta); SIM s1 = sum delta*r, s2 = sum delta^2;
        DMD s1 = sum (yf - yr)^2; DSM s1 = sum (pred - target)^2.
        """
        if FP64:
            zero = tl.zeros([BLOCK], dtype=tl.float64)
        else:
            zero = tl.zeros([BLOCK], dtype=tl.float32)
        p = _scalar(p0h, p0l, FP64)
        acc_abs = zero
        acc1 = zero
        acc2 = zero
        acc_bad = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < hi
            y = _load_math(y_ptr, offs, m, FP64)
            yr = _load_math(yr_ptr, offs, m, FP64)
            if MODE == 3:
                fin = _finite(y) & _finite(yr)
                e = y - yr
                acc1 += e * e
            else:
                yf = _load_math(yf_ptr, offs, m, FP64)
                fin = _finite(y) & _finite(yr) & _finite(yf)
                if NEED_ABS:
                    acc_abs += tl.abs(y - yr)
                if MODE == 0:
                    d = yr - yf
                    acc1 += d * ((yr - y) - p * d)
                elif MODE == 1:
                    d = yr - yf
                    acc1 += d * (yf - y)
                    if PH:
                        acc2 += d * d
                else:
                    g = yf - yr
                    acc1 += g * g
            acc_bad += tl.where(fin, 0, 1)
        return tl.sum(acc_abs, axis=0), tl.sum(acc_bad, axis=0), tl.sum(acc1, axis=0), tl.sum(acc2, axis=0)

    @triton.jit
    def _coefficients(
        s_abs, s_bad, s1, s2, w_ptr, pid, N, p0h, p0l, sch, scl,
        MODE: tl.constexpr, HAS_W: tl.constexpr, PH: tl.constexpr, FP64: tl.constexpr,
    ):
        """(loss, c1, c2, bad) of one sample from its sums; zero loss and coefficients when bad
        (a non-finite input element, or a non-finite given weight / sigma)."""
        p = _scalar(p0h, p0l, FP64)
        sc = _scalar(sch, scl, FP64)
        bad = s_bad > 0
        c2 = s1 * 0.0
        if MODE == 3:
            sig = _to_math(tl.load(w_ptr + pid), FP64)
            bad = bad | _nonfinite(sig)
            sig = tl.where(bad, 1.0, sig)
            lam = (sig * sig + p * p) / ((sig * p) * (sig * p))
            loss = lam * s1 * sc
            c1 = 2.0 * lam * sc
        else:
            if HAS_W:
                w = _to_math(tl.load(w_ptr + pid), FP64)
                bad = bad | _nonfinite(w)
            else:
                w = tl.maximum(s_abs / _to_math(N, FP64), _weight_floor(FP64))
            w = tl.where(bad, 1.0, w)
            k = sc / w
            if MODE == 0:
                loss = s1 * k
                c1 = k
            elif MODE == 1:
                if PH:
                    inv = 1.0 / tl.sqrt(s2 + p * p)
                    c1 = k * inv
                    c2 = c1 * s1 * inv * inv
                    loss = s1 * c1
                else:
                    loss = s1 * k
                    c1 = k
            else:
                loss = 0.5 * s1 * k / w
                c1 = k
        loss = tl.where(bad, 0.0, loss)
        c1 = tl.where(bad, 0.0, c1)
        c2 = tl.where(bad, 0.0, c2)
        return loss, c1, c2, bad

    @triton.jit
    def _write_grads(
        y_ptr, yr_ptr, yf_ptr, gy_ptr, gyr_ptr, gyf_ptr, lo, hi, c1, c2, p0h, p0l, bad,
        MODE: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """Pass 2: gradients of elements [lo, hi) of one sample (pointers at the sample start)."""
        p = _scalar(p0h, p0l, FP64)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < hi
            yr = _load_math(yr_ptr, offs, m, FP64)
            if MODE == 2:
                yf = _load_math(yf_ptr, offs, m, FP64)
                gy = tl.where(bad, 0.0, (yf - yr) * c1)
            elif MODE == 3:
                y = _load_math(y_ptr, offs, m, FP64)
                gy = tl.where(bad, 0.0, (y - yr) * c1)
            else:
                y = _load_math(y_ptr, offs, m, FP64)
                yf = _load_math(yf_ptr, offs, m, FP64)
                d = yr - yf
                if MODE == 0:
                    a = yr - y
                    gy = -d * c1
                    gyr = (a + (1.0 - 2.0 * p) * d) * c1
                    gyf = (2.0 * p * d - a) * c1
                else:
                    r = yf - y
                    gy = -d * c1
                    gyr = r * c1 - d * c2
                    gyf = d * (c1 + c2) - r * c1
                gyr = tl.where(bad, 0.0, gyr)
                gyf = tl.where(bad, 0.0, gyf)
                gy = tl.where(bad, 0.0, gy)
                tl.store(gyr_ptr + offs, gyr.to(gyr_ptr.dtype.element_ty), mask=m)
                tl.store(gyf_ptr + offs, gyf.to(gyf_ptr.dtype.element_ty), mask=m)
            tl.store(gy_ptr + offs, gy.to(gy_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _fused_kernel(
        y_ptr, yr_ptr, yf_ptr, w_ptr, loss_ptr, gy_ptr, gyr_ptr, gyf_ptr, N,
        p0h, p0l, sch, scl,
        MODE: tl.constexpr, HAS_W: tl.constexpr, NEED_ABS: tl.constexpr, PH: tl.constexpr, FP64: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One program per sample: pass 1 sums, loss, pass 2 gradients."""
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * N
        y_ptr += base
        yr_ptr += base
        yf_ptr += base
        gy_ptr += base
        gyr_ptr += base
        gyf_ptr += base
        s_abs, s_bad, s1, s2 = _accumulate(y_ptr, yr_ptr, yf_ptr, 0, N, p0h, p0l, MODE, NEED_ABS, PH, FP64, BLOCK)
        loss, c1, c2, bad = _coefficients(s_abs, s_bad, s1, s2, w_ptr, pid, N, p0h, p0l, sch, scl, MODE, HAS_W, PH, FP64)
        tl.store(loss_ptr + pid, loss.to(loss_ptr.dtype.element_ty))
        _write_grads(y_ptr, yr_ptr, yf_ptr, gy_ptr, gyr_ptr, gyf_ptr, 0, N, c1, c2, p0h, p0l, bad, MODE, FP64, BLOCK)

    @triton.jit
    def _split_stats_kernel(
        y_ptr, yr_ptr, yf_ptr, part_ptr, N, CHUNK, S,
        p0h, p0l,
        MODE: tl.constexpr, NEED_ABS: tl.constexpr, PH: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """Grid (B, S): partial sums of chunk s of sample b -> part[b, s, 0:4]."""
        pid = tl.program_id(0)
        sid = tl.program_id(1)
        base = pid.to(tl.int64) * N
        lo = sid * CHUNK
        hi = tl.minimum(lo + CHUNK, N)
        s_abs, s_bad, s1, s2 = _accumulate(y_ptr + base, yr_ptr + base, yf_ptr + base, lo, hi, p0h, p0l,
                                           MODE, NEED_ABS, PH, FP64, BLOCK)
        out = part_ptr + (pid.to(tl.int64) * S + sid) * 4
        ty = part_ptr.dtype.element_ty
        tl.store(out + 0, s_abs.to(ty))
        tl.store(out + 1, s_bad.to(ty))
        tl.store(out + 2, s1.to(ty))
        tl.store(out + 3, s2.to(ty))

    @triton.jit
    def _split_grad_kernel(
        y_ptr, yr_ptr, yf_ptr, w_ptr, part_ptr, loss_ptr, gy_ptr, gyr_ptr, gyf_ptr, N, CHUNK, S,
        p0h, p0l, sch, scl,
        MODE: tl.constexpr, HAS_W: tl.constexpr, PH: tl.constexpr, FP64: tl.constexpr,
        BLOCK: tl.constexpr, S_POW2: tl.constexpr,
    ):
        """Grid (B, S): reduce the S partials of sample b, write its loss (s == 0) and chunk s of the gradients."""
        pid = tl.program_id(0)
        sid = tl.program_id(1)
        base = pid.to(tl.int64) * N
        so = tl.arange(0, S_POW2)
        sm = so < S
        prow = part_ptr + (pid.to(tl.int64) * S + so) * 4
        s_abs = tl.sum(_load_math(prow, 0, sm, FP64), axis=0)
        s_bad = tl.sum(_load_math(prow, 1, sm, FP64), axis=0)
        s1 = tl.sum(_load_math(prow, 2, sm, FP64), axis=0)
        s2 = tl.sum(_load_math(prow, 3, sm, FP64), axis=0)
        loss, c1, c2, bad = _coefficients(s_abs, s_bad, s1, s2, w_ptr, pid, N, p0h, p0l, sch, scl, MODE, HAS_W, PH, FP64)
        if sid == 0:
            tl.store(loss_ptr + pid, loss.to(loss_ptr.dtype.element_ty))
        lo = sid * CHUNK
        hi = tl.minimum(lo + CHUNK, N)
        _write_grads(y_ptr + base, yr_ptr + base, yf_ptr + base, gy_ptr + base, gyr_ptr + base, gyf_ptr + base,
                     lo, hi, c1, c2, p0h, p0l, bad, MODE, FP64, BLOCK)

    if INTERPRET:
        _fused_launch = _fused_kernel
    else:
        _fused_launch = triton.autotune(
            configs=[
                triton.Config({"BLOCK": 1024}, num_warps=4),
                triton.Config({"BLOCK": 2048}, num_warps=8),
                triton.Config({"BLOCK": 4096}, num_warps=8),
                triton.Config({"BLOCK": 4096}, num_warps=16),
            ],
            key=["N", "MODE", "HAS_W", "NEED_ABS", "PH", "FP64"],
        )(_fused_kernel)


# --- availability ---------------------------------------------------------------------------

def is_available(device_type: Optional[str] = None) -> tuple[bool, str]:
    """(available, reason) for running these kernels on tensors of `device_type` ('cuda'/'cpu'; None = either)."""
    if triton is None:
        return False, f"triton is not importable ({_IMPORT_ERROR})"
    version = getattr(triton, "__version__", "?")
    cuda = torch.cuda.is_available()
    if device_type in (None, "cuda") and cuda and not INTERPRET:
        return True, f"triton {version} on CUDA"
    if device_type in (None, "cpu") and INTERPRET:
        return True, (f"triton {version} interpreter on CPU tensors (TRITON_INTERPRET=1): "
                      "correct but very slow, for tests only")
    if device_type == "cuda":
        if INTERPRET:
            return False, "TRITON_INTERPRET=1 was set when the kernels were loaded; they run on CPU tensors only"
        return False, "no CUDA device"
    if device_type == "cpu" or not cuda:
        hint = ("TRITON_INTERPRET=1 is set now but was not when fastdistill.ops.triton_kernels was imported"
                if _env_interpret() else "set TRITON_INTERPRET=1 before importing fastdistill to use the interpreter")
        return False, f"triton kernels need a CUDA device; on CPU tensors only under the interpreter ({hint})"
    return False, f"triton kernels not usable on {device_type} tensors"


# --- launchers --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_splits(B: int, N: int, device: torch.device) -> int:
    if _FORCE_SPLITS is not None:
        return max(1, min(int(_FORCE_SPLITS), N))
    if device.type != "cuda" or N < _SPLIT_MIN_N:
        return 1
    target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    if B >= target:
        return 1
    return max(1, min(triton.cdiv(target, B), triton.cdiv(N, _SPLIT_CHUNK_MIN), 1024))


def _check(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    ref = tensors[0]
    if ref.dim() < 1:
        raise ValueError(f"{names[0]} needs a leading batch dimension, got a 0-d tensor")
    for name, t in zip(names, tensors):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} like {names[0]}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device}, expected {ref.device}")


def _per_sample_vector(t: torch.Tensor, B: int, name: str, device: torch.device) -> torch.Tensor:
    if t.numel() != B:
        raise ValueError(f"{name} must have one value per sample ({B}), got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    return t.detach().reshape(B).contiguous()


def _launch(mode: int, tensors, n_grads: int, vec: Optional[torch.Tensor], p0: float, scale: float, ph: bool):
    y, yr, yf = tensors
    B = y.shape[0]
    N = y.numel() // B if B else 0
    fp64 = any(t.dtype == torch.float64 for t in tensors)
    loss = torch.empty(B, dtype=torch.float64 if y.dtype == torch.float64 else torch.float32, device=y.device)
    grad_src = (y, yr, yf)[:n_grads]
    grads = [empty_grad(t) for t in grad_src]
    if B == 0 or N == 0:
        return (loss.zero_(), *[g.zero_() for g in grads])
    gy = grads[0]
    gyr = grads[1] if n_grads > 1 else gy
    gyf = grads[2] if n_grads > 2 else gy
    has_w = vec is not None and mode != _DSM
    w = vec if vec is not None else loss  # dummy pointer when no weight (never read)
    scalars = (*_split_float(p0), *_split_float(scale))
    need_abs = mode != _DSM and not has_w
    S = _num_splits(B, N, y.device)
    guard = (torch.cuda.device(y.device) if y.is_cuda and y.device.index != torch.cuda.current_device()
             else _nullcontext())
    with guard:
        if S <= 1:
            if INTERPRET:
                _fused_launch[(B,)](y, yr, yf, w, loss, gy, gyr, gyf, N, *scalars,
                                    MODE=mode, HAS_W=has_w, NEED_ABS=need_abs, PH=ph, FP64=fp64,
                                    BLOCK=_INTERP_BLOCK, num_warps=4)
            else:
                _fused_launch[(B,)](y, yr, yf, w, loss, gy, gyr, gyf, N, *scalars,
                                    MODE=mode, HAS_W=has_w, NEED_ABS=need_abs, PH=ph, FP64=fp64)
        else:
            chunk = triton.cdiv(triton.cdiv(N, S), 256) * 256
            S = triton.cdiv(N, chunk)
            block = _INTERP_BLOCK if INTERPRET else _SPLIT_BLOCK
            part = torch.empty((B, S, 4), dtype=torch.float64 if fp64 else torch.float32, device=y.device)
            _split_stats_kernel[(B, S)](y, yr, yf, part, N, chunk, S, *scalars[:2],
                                        MODE=mode, NEED_ABS=need_abs, PH=ph, FP64=fp64, BLOCK=block,
                                        num_warps=_SPLIT_WARPS)
            _split_grad_kernel[(B, S)](y, yr, yf, w, part, loss, gy, gyr, gyf, N, chunk, S, *scalars,
                                       MODE=mode, HAS_W=has_w, PH=ph, FP64=fp64, BLOCK=block,
                                       S_POW2=triton.next_power_of_2(S), num_warps=_SPLIT_WARPS)
    return (loss, *grads)


def _split_float(x: float) -> tuple[float, float]:
    """x as hi + lo with both exactly representable in fp32 (hi = fp32(x)): about 48 bits of x."""
    x = float(x)
    try:
        hi = _F32.unpack(_F32.pack(x))[0]
    except OverflowError:  # beyond the fp32 range: the kernel sees +-inf, as an fp32 cast would
        hi = math.copysign(math.inf, x)
    if math.isinf(hi):
        return hi, 0.0
    return hi, _F32.unpack(_F32.pack(x - hi))[0]


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError(f"triton is not importable ({_IMPORT_ERROR})")


def _prepare3(names, y, y_real, y_fake, weight):
    _require_triton()
    _check(names, (y, y_real, y_fake))
    tensors = as_rows(y, y_real, y_fake)
    w = None if weight is None else _per_sample_vector(weight, y.shape[0], "weight", y.device)
    return tensors, w


_NAMES3 = ("y", "y_real", "y_fake")


def sid_fused(y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, weight: Optional[torch.Tensor],
              alpha: float, scale: float):
    """SiD loss and its gradients: `(loss[B], grad_y, grad_y_real, grad_y_fake)`."""
    tensors, w = _prepare3(_NAMES3, y, y_real, y_fake, weight)
    return _launch(_SID, tensors, 3, w, alpha, scale, False)


def sim_fused(y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, weight: Optional[torch.Tensor],
              c: float, pseudo_huber: bool, scale: float):
    """SIM loss (pseudo-Huber or l2) and its gradients: `(loss[B], grad_y, grad_y_real, grad_y_fake)`."""
    tensors, w = _prepare3(_NAMES3, y, y_real, y_fake, weight)
    return _launch(_SIM, tensors, 3, w, c, scale, bool(pseudo_huber))


def dmd_fused(y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, weight: Optional[torch.Tensor],
              scale: float):
    """DMD loss and its gradient with respect to y (the teacher outputs get none): `(loss[B], grad_y)`."""
    tensors, w = _prepare3(_NAMES3, y, y_real, y_fake, weight)
    return _launch(_DMD, tensors, 1, w, 0.0, scale, False)


def dsm_fused(pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, sigma_data: float, scale: float):
    """DSM loss `lambda(sigma) sum (pred - target)^2 * scale` and grad_pred (grad_target = -grad_pred)."""
    _require_triton()
    _check(("pred", "target"), (pred, target))
    p, t = as_rows(pred, target)
    sig = _per_sample_vector(sigma, pred.shape[0], "sigma", pred.device)
    # y_fake is unused in DSM mode; pass target as a harmless pointer.
    return _launch(_DSM, (p, t, t), 1, sig, sigma_data, scale, False)
