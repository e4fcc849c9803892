"""Triton fused loss kernels against the pure-PyTorch oracle (fastdistill/ops/reference.py).

Without a CUDA device the kernels run on CPU tensors in Triton's interpreter, which must be
switched on before `fastdistill.ops.triton_kernels` is imported (tests/conftest.py does it for
the whole session; the setdefault below makes this file work when run alone). The interpreter
is slow, so the shapes stay tiny; on a GPU the same tests are marked `gpu`. The last test compiles every kernel variant for a CUDA
target (down to cubin) in a subprocess, which proves the GPU code path compiles without a GPU.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

try:
    import triton  # noqa: F401,E402
except ImportError:  # pragma: no cover
    if "triton" in {b.strip() for b in os.environ.get("FASTDISTILL_REQUIRE_BACKENDS", "").split(",")}:
        raise
    pytest.skip("triton is not installed", allow_module_level=True)

from fastdistill.ops import reference  # noqa: E402
from fastdistill.ops import triton_kernels as tk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# With a GPU the whole oracle suite runs on it and is part of `pytest -m gpu` (the GPU check's
# selection); without one it runs in the interpreter with every other CPU test.
pytestmark = [pytest.mark.gpu] if DEVICE == "cuda" else []
REPO_ROOT = Path(__file__).resolve().parents[1]

SHAPES = [(3, 5, 7), (2, 1), (1, 3, 5, 5), (4, 3, 8, 8)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# relative tolerance (also used as atol relative to the largest reference magnitude)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
# losses see half inputs only after an exact upcast: compare them tighter than the gradients
LOSS_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}

# (name, kernel(inputs, weight) -> outputs, reference(inputs, weight) -> loss, number of inputs,
#  indices of the inputs the reference differentiates)
ALPHA, C, SCALE, SIGMA_DATA = 1.2, 1e-3, 2.5, 0.5
OPS = {
    "sid": (
        lambda x, w: tk.sid_fused(*x, w, ALPHA, SCALE),
        lambda x, w: reference.sid(*x, w, ALPHA, SCALE),
        (0, 1, 2),
    ),
    "sim_pseudo_huber": (
        lambda x, w: tk.sim_fused(*x, w, C, True, SCALE),
        lambda x, w: reference.sim(*x, w, C, True, SCALE),
        (0, 1, 2),
    ),
    "sim_l2": (
        lambda x, w: tk.sim_fused(*x, w, C, False, SCALE),
        lambda x, w: reference.sim(*x, w, C, False, SCALE),
        (0, 1, 2),
    ),
    "dmd": (
        lambda x, w: tk.dmd_fused(*x, w, SCALE),
        lambda x, w: reference.dmd(*x, w, SCALE),
        (0,),
    ),
    # DSM: the "weight" slot carries sigma; the kernel returns grad_pred only, grad_target = -grad_pred
    "dsm": (
        lambda x, s: tk.dsm_fused(x[0], x[1], s, SIGMA_DATA, SCALE),
        lambda x, s: reference.dsm(x[0], x[1], s, SIGMA_DATA, SCALE),
        (0, 1),
    ),
}


def _inputs(op, shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 2 if op == "dsm" else 3
    # y_fake close to y_real, as in training (keeps SIM's N away from c)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
    if n == 3:
        xs[2] = xs[1] + 0.3 * xs[2]
    return [x.to(dtype).to(DEVICE) for x in xs]


def _aux(op, B, given, dtype=None, seed=1):
    """sigma for DSM (always given), else the optional per-sample weight."""
    g = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float32
    if op == "dsm":
        return (torch.rand(B, generator=g, dtype=torch.float64) * 3 + 0.05).to(dtype).to(DEVICE)
    if not given:
        return None
    return (torch.rand(B, generator=g, dtype=torch.float64) + 0.5).to(dtype).to(DEVICE)


def _acc(dtype):
    """DSM's sigma in the math dtype: the reference computes lambda(sigma) in sigma's dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upstream(B, dtype):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(B, generator=g, dtype=torch.float64) + 0.5).to(dtype).to(DEVICE)


def _reference_grads(op, xs, aux):
    """Reference loss and grads of (loss * g).sum() for a non-trivial upstream g."""
    _, ref_fn, diff = OPS[op]
    leaves = [x.detach().clone().requires_grad_(i in diff) for i, x in enumerate(xs)]
    loss = ref_fn(leaves, aux)
    g = _upstream(loss.shape[0], loss.dtype)
    (loss * g).sum().backward()
    return loss.detach(), [leaves[i].grad for i in diff], g


def _close(actual, expected, tol, what):
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    atol = tol * (expected.abs().max().item() + 1.0)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=atol, msg=lambda m: f"{what}: {m}")


def _kernel_grads(op, out, g, xs):
    """Kernel gradients of (loss * g).sum(), per reference-differentiated input."""
    grads = list(out[1:])
    if op == "dsm":
        grads = [grads[0], -grads[0]]
    bshape = lambda t: g.reshape(-1, *([1] * (t.dim() - 1)))  # noqa: E731
    return [gr.to(torch.float64) * bshape(gr).to(torch.float64) for gr in grads]


def _check_against_reference(op, xs, aux, dtype):
    kern, _, diff = OPS[op]
    out = kern(xs, aux)
    ref_loss, ref_grads, g = _reference_grads(op, xs, aux)
    # output contract: loss (B,) fp32 (fp64 for fp64), gradients in input dtype/shape, contiguous
    assert out[0].shape == (xs[0].shape[0],)
    assert out[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    n_grads = 1 if op in ("dmd", "dsm") else 3
    assert len(out) == 1 + n_grads
    for gr, x in zip(out[1:], xs):
        assert gr.dtype == x.dtype and gr.shape == x.shape and gr.is_contiguous()
    _close(out[0], ref_loss, LOSS_TOL[dtype], f"{op} loss")
    for i, (kg, rg) in enumerate(zip(_kernel_grads(op, out, g, xs), ref_grads)):
        _close(kg, rg, TOL[dtype], f"{op} grad of input {diff[i]}")
    return out


ALL_CONFIGS = list(getattr(tk._fused_launch, "configs", None) or [])  # the autotuner's (none in the interpreter)


@pytest.fixture(autouse=True, scope="module")
def _one_autotune_config():
    """On a GPU the oracle tests launch the autotuner's first config only: the numerics are every
    config's, test_every_autotune_config_matches covers the others once, and the compiles stay
    within the GPU check's share. (The interpreter has no autotuner: one config.)"""
    launch = tk._fused_launch
    if DEVICE != "cuda" or not ALL_CONFIGS or not isinstance(getattr(launch, "cache", None), dict):
        yield
        return
    launch.configs = ALL_CONFIGS[:1]
    launch.cache.clear()
    yield
    launch.configs = ALL_CONFIGS
    launch.cache.clear()


# --- agreement with the reference -------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("op", list(OPS))
def test_matches_reference(op, dtype, shape):
    xs = _inputs(op, shape, dtype)
    # weight None for the main matrix (the in-kernel mean|y - yr| weight); given weight below
    _check_against_reference(op, xs, _aux(op, shape[0], given=False, dtype=_acc(dtype)), dtype)


@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter runs one config (no autotuner); a GPU runs them all")
@pytest.mark.parametrize("op", list(OPS))
def test_every_autotune_config_matches(op):
    launch = tk._fused_launch
    assert len(ALL_CONFIGS) > 1
    try:
        for config in ALL_CONFIGS:
            launch.configs = [config]
            launch.cache.clear()
            _check_against_reference(op, _inputs(op, (4, 3, 40, 40), torch.float32, seed=11),
                                     _aux(op, 4, given=False), torch.float32)
    finally:
        launch.configs = ALL_CONFIGS[:1]  # the module's setting (the fixture restores all)
        launch.cache.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", ["sid", "sim_pseudo_huber", "sim_l2", "dmd"])
def test_given_weight(op, dtype):
    shape = (3, 5, 7)
    xs = _inputs(op, shape, dtype, seed=3)
    for wdtype in (torch.float32, torch.float64):
        _check_against_reference(op, xs, _aux(op, shape[0], given=True, dtype=wdtype), dtype)


def test_weight_floor():
    """y == y_real: mean|y - yr| = 0, so w = 1e-5 exactly (fp64 checks the constant is not fp32-rounded)."""
    xs = _inputs("sid", (2, 3, 4), torch.float64, seed=4)
    xs[0] = xs[1].clone()
    for op in ("sid", "sim_pseudo_huber", "dmd"):
        _check_against_reference(op, xs, None, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_non_finite_samples(op, dtype):
    """A NaN anywhere in a sample's inputs zeroes that sample's loss and gradients only; so do
    +inf and -inf (in fp32: on a GPU the rule must hold under Triton's fast math too)."""
    shape = (4, 3, 5)
    B = shape[0]
    n_inputs = 2 if op == "dsm" else 3
    bad_values = ("nan", "inf", "-inf") if dtype == torch.float32 else ("nan",)
    for where, bad in [(w, b) for w in range(n_inputs + (1 if op == "dsm" else 0)) for b in bad_values]:
        xs = _inputs(op, shape, dtype, seed=5)
        aux = _aux(op, B, given=False, dtype=_acc(dtype))
        if where < n_inputs:
            xs[where] = xs[where].clone()
            xs[where][1, 2, 3] = float(bad)
        else:  # DSM: a bad sigma
            aux = aux.clone()
            aux[1] = float(bad)
        out = _check_against_reference(op, xs, aux, dtype)
        assert out[0][1].item() == 0.0
        for gr in out[1:]:
            assert torch.count_nonzero(gr[1]).item() == 0
            assert torch.isfinite(gr).all()
        assert (out[0][[0, 2, 3]] != 0).all()


@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous_inputs(op):
    """Transposed views, an expanded (stride-0) tensor and a sliced weight are made contiguous."""
    base = _inputs(op, (4, 3, 8, 6), torch.float32, seed=6)
    xs = [b.transpose(2, 3) for b in base]  # (4, 3, 6, 8), non-contiguous
    one = _inputs("dsm", (1, 3, 6, 8), torch.float32, seed=7)[0]
    xs[-1] = one.expand(4, 3, 6, 8)
    assert not any(x.is_contiguous() for x in xs)
    aux = _aux(op, 8, given=True)
    aux = aux[::2] if aux is not None else None
    _check_against_reference(op, xs, aux, torch.float32)
    if op != "dsm":
        _check_against_reference(op, xs, None, torch.float32)


@pytest.mark.parametrize("op", list(OPS))
def test_split_path(op, monkeypatch):
    """Huge samples with a small batch are split over a second grid dimension; force it here."""
    monkeypatch.setattr(tk, "_FORCE_SPLITS", 3)
    shape = (2, 3, 20, 20)  # N = 1200 -> chunks of 512, 512, 176
    for dtype in (torch.float32, torch.float64):
        xs = _inputs(op, shape, dtype, seed=8)
        _check_against_reference(op, xs, _aux(op, 2, given=False, dtype=_acc(dtype)), dtype)
        if op != "dsm":
            _check_against_reference(op, xs, _aux(op, 2, given=True), dtype)
    xs = _inputs(op, shape, torch.float32, seed=9)
    xs[0] = xs[0].clone()
    xs[0][0, 2, 19, 19] = float("nan")  # in the last chunk
    out = _check_against_reference(op, xs, _aux(op, 2, given=False), torch.float32)
    assert out[0][0].item() == 0.0 and out[0][1].item() != 0.0
    assert all(torch.count_nonzero(gr[0]).item() == 0 for gr in out[1:])


# --- self-consistency: the written gradients are the gradients of the written loss ------------

class _KernelLoss(torch.autograd.Function):
    """Loss from the kernel; backward from the gradients the kernel wrote (for gradcheck)."""

    @staticmethod
    def forward(ctx, fn, n_grads, *xs):
        out = fn(xs)
        ctx.save_for_backward(*out[1:])
        ctx.n_inputs = len(xs)
        return out[0]

    @staticmethod
    def backward(ctx, g):
        grads = [gr * g.reshape(-1, *([1] * (gr.dim() - 1))) for gr in ctx.saved_tensors]
        grads += [None] * (ctx.n_inputs - len(grads))
        return (None, None, *grads)


@pytest.mark.parametrize("op", ["sid", "sim_pseudo_huber", "sim_l2", "dsm"])
def test_gradcheck_float64(op):
    """Finite differences of the kernel's own loss (fixed weight / sigma: the stop-gradient inputs).

    Not DMD: its value 0.5|g|^2 does not depend on y (the gradient g is a surrogate's), so
    finite differences are zero by construction; DMD is checked against the reference only.
    """
    kern, _, _ = OPS[op]
    xs = [x.requires_grad_() for x in _inputs(op, (2, 3), torch.float64, seed=10)]
    aux = _aux(op, 2, given=True, dtype=torch.float64)
    if op == "dsm":
        fn = lambda p: _KernelLoss.apply(lambda t: kern([t[0], xs[1].detach()], aux), 1, p)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (xs[0],), eps=1e-6, atol=1e-7)
    else:
        fn = lambda *t: _KernelLoss.apply(lambda u: kern(list(u), aux), 3, *t)  # noqa: E731
        assert torch.autograd.gradcheck(fn, tuple(xs), eps=1e-6, atol=1e-7)


# --- contract details --------------------------------------------------------------------

def test_empty_batch_and_errors():
    y = torch.zeros(0, 3, device=DEVICE)
    loss, gy, gyr, gyf = tk.sid_fused(y, y, y, None, ALPHA, SCALE)
    assert loss.shape == (0,) and gy.shape == (0, 3)
    a, b = _inputs("dsm", (2, 3), torch.float32)
    with pytest.raises(ValueError):
        tk.sid_fused(a, b, b[:1], None, ALPHA, SCALE)
    with pytest.raises(ValueError):
        tk.sid_fused(a, b, b, torch.ones(3, device=DEVICE), ALPHA, SCALE)
    with pytest.raises(TypeError):
        tk.dmd_fused(a, b, b.to(torch.int64), None, SCALE)


def test_is_available_here():
    ok, reason = tk.is_available()
    assert ok, reason
    if DEVICE == "cpu":
        assert tk.INTERPRET and "interpreter" in reason
        assert tk.is_available("cpu")[0]
        assert not tk.is_available("cuda")[0]
    else:
        assert tk.is_available("cuda")[0]


# --- the GPU code path compiles (no GPU needed) ------------------------------------------

_COMPILE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, sys.argv[1])
    import triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    from fastdistill.ops import triton_kernels as tk
    assert not tk.INTERPRET

    def compile_(fn, sig, consts, target):
        idx = list(sig)
        src = ASTSource(fn=fn, signature=sig, constexprs={(idx.index(k),): v for k, v in consts.items()})
        triton.compile(src, target=target, options={"num_warps": 8})

    target = GPUTarget("cuda", 80, 32)
    variants = ((0, False, False), (1, True, True), (1, False, False), (2, False, False), (3, True, False))
    for dt, fp64, modes in (("fp32", False, variants), ("fp64", True, variants[:2] + variants[4:]),
                            ("bf16", False, variants[:1]), ("fp16", False, variants[1:2])):
        acc = "fp64" if fp64 else "fp32"
        for mode, has_w, ph in modes:
            sig = {"y_ptr": "*" + dt, "yr_ptr": "*" + dt, "yf_ptr": "*" + dt, "w_ptr": "*fp32", "loss_ptr": "*" + acc,
                   "gy_ptr": "*" + dt, "gyr_ptr": "*" + dt, "gyf_ptr": "*" + dt, "N": "i32",
                   "p0h": "fp32", "p0l": "fp32", "sch": "fp32", "scl": "fp32",
                   "MODE": "constexpr", "HAS_W": "constexpr", "NEED_ABS": "constexpr", "PH": "constexpr",
                   "FP64": "constexpr", "BLOCK": "constexpr"}
            consts = {"MODE": mode, "HAS_W": has_w, "NEED_ABS": mode != 3 and not has_w, "PH": ph, "FP64": fp64,
                      "BLOCK": 2048}
            compile_(tk._fused_kernel, sig, consts, target)
    # a specialised N == 1 (constexpr), and the split kernels
    sig["N"] = "constexpr"
    compile_(tk._fused_kernel, sig, {**consts, "N": 1}, target)
    s1 = {"y_ptr": "*fp32", "yr_ptr": "*fp32", "yf_ptr": "*fp32", "part_ptr": "*fp32", "N": "i32", "CHUNK": "i32",
          "S": "i32", "p0h": "fp32", "p0l": "fp32", "MODE": "constexpr", "NEED_ABS": "constexpr", "PH": "constexpr",
          "FP64": "constexpr", "BLOCK": "constexpr"}
    s2 = {"y_ptr": "*fp32", "yr_ptr": "*fp32", "yf_ptr": "*fp32", "w_ptr": "*fp32", "part_ptr": "*fp32",
          "loss_ptr": "*fp32", "gy_ptr": "*fp32", "gyr_ptr": "*fp32", "gyf_ptr": "*fp32", "N": "i32", "CHUNK": "i32",
          "S": "i32", "p0h": "fp32", "p0l": "fp32", "sch": "fp32", "scl": "fp32", "MODE": "constexpr",
          "HAS_W": "constexpr", "PH": "constexpr", "FP64": "constexpr", "BLOCK": "constexpr", "S_POW2": "constexpr"}
    for mode in (1, 3):
        compile_(tk._split_stats_kernel, s1, {"MODE": mode, "NEED_ABS": mode != 3, "PH": True, "FP64": False,
                                              "BLOCK": 2048}, target)
        compile_(tk._split_grad_kernel, s2, {"MODE": mode, "HAS_W": mode == 3, "PH": True, "FP64": False,
                                             "BLOCK": 2048, "S_POW2": 8}, target)
    print("compiled")
    """
)


def test_kernels_compile_for_cuda():
    """Every kernel variant lowers to cubin for sm_80 (Triton ships ptxas), in a fresh process without the interpreter."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton built without the NVIDIA backend
        pytest.fail(f"triton has no NVIDIA backend to compile with: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, str(REPO_ROOT)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]
