"""Every loss backend against the reference oracle, the official SiD vectors, and torch.library checks."""
import math

import pytest
import torch
from safetensors.torch import load_file

from fastdistill.losses import DMDLoss, DSMLoss, SiDLoss, SIMLoss, dmd_loss, dsm_loss, sid_loss, sim_loss
from fastdistill.ops import backend_status

from .conftest import required_backends

FUSED = ["cpp", "triton"]
# (backend, device) pairs: the fused kernels on CPU tensors here, and on CUDA tensors with a GPU.
CPU_FUSED = [("cpp", "cpu"), ("triton", "cpu")]
CUDA_FUSED = [("cuda", "cuda"), ("triton", "cuda")]


def on_devices(pairs):
    """(backend, device) params, marked gpu on CUDA; ids: the backend, plus "-cuda" where that is not its name."""
    return [pytest.param(b, d, id=b if d in ("cpu", b) else f"{b}-{d}", marks=[pytest.mark.gpu] if d == "cuda" else [])
            for b, d in pairs]

# (loss name, function, keyword arguments): every option of every loss.
CASES = [
    ("sid", sid_loss, dict(alpha=1.2)),
    ("sid", sid_loss, dict(alpha=0.5, divisor="none")),
    ("sim", sim_loss, dict()),
    ("sim", sim_loss, dict(distance="l2", divisor="mean_abs")),
    ("sim", sim_loss, dict(c=0.5, divisor="mean_abs")),
    ("dmd", dmd_loss, dict()),
    ("dmd", dmd_loss, dict(divisor="none")),
    ("dsm", dsm_loss, dict()),
    ("dsm", dsm_loss, dict(sigma_data=1.0)),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for name, _, kw in CASES]


def use_backend(name: str, device: str = "cpu") -> str:
    ok, reason = backend_status(name, device)
    if not ok:
        if name in required_backends():
            pytest.fail(f"backend {name} is required here but unavailable: {reason}")
        pytest.skip(f"backend {name} unavailable: {reason}")
    return name


def make_inputs(loss: str, shape, dtype=torch.float32, seed=0, permuted=False, device="cpu"):
    """Drawn on the CPU (the same values on every device), then moved to `device`."""
    g = torch.Generator().manual_seed(seed)

    def rand():
        if permuted:  # same values, non-contiguous memory: a permuted view of another layout
            t = torch.randn(shape[0], *shape[1:][::-1], generator=g, dtype=torch.float64)
            return t.permute(0, *range(len(shape) - 1, 0, -1)).to(dtype)
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    if loss == "dsm":
        sigma = torch.exp(torch.randn(shape[0], generator=g, dtype=torch.float64) * 1.2 - 1.2)
        inputs = [rand(), rand(), sigma.to(dtype)]
    else:
        y = rand()
        # y_real close to y, y_fake between: the regime a distillation run lives in.
        inputs = [y, (y.double() + 0.3 * rand().double()).to(dtype), (y.double() + 0.2 * rand().double()).to(dtype)]
    return [t.to(device) for t in inputs]


def run(fn, inputs, backend, upstream=None, **kwargs):
    """Per-sample loss and the input gradients of sum(loss * upstream)."""
    leaves = [t.detach().clone().requires_grad_(i < 2 or t.dim() > 1) for i, t in enumerate(inputs)]
    if leaves[-1].dim() == 1:  # dsm sigma takes no gradient
        leaves[-1].requires_grad_(False)
    out = fn(*leaves, reduction="none", backend=backend, **kwargs)
    weight = torch.ones_like(out) if upstream is None else upstream
    (out * weight).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def tolerances(dtype):
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-4, atol=1e-5),
    }[dtype]  # half formats: test_fused_dtypes' bounds in ulps


def assert_matches(got, want, dtype):
    out_g, grads_g = got
    out_w, grads_w = want
    tol = tolerances(dtype)
    scale = out_w.abs().max().clamp_min(1.0)
    torch.testing.assert_close(out_g, out_w, rtol=tol["rtol"], atol=tol["atol"] * scale.item(), check_dtype=True)
    # Gradients that nearly cancel (SIM's r/N - S delta/N^3) are judged on the scale of the largest one.
    gscale = max(b.abs().max().item() for b in grads_w if b is not None)
    for i, (a, b) in enumerate(zip(grads_g, grads_w)):
        assert (a is None) == (b is None), f"gradient {i}: one backend returns None"
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a.double(), b.double(), rtol=tol["rtol"], atol=tol["atol"] * gscale, msg=f"gradient {i}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name,fn,kwargs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (3, 5, 7), (1, 1), (2, 3, 1, 17)])
def test_fused_matches_reference(backend, name, fn, kwargs, shape):
    use_backend(backend)
    inputs = make_inputs(name, shape)
    upstream = torch.linspace(-1.5, 2.0, shape[0])
    assert_matches(run(fn, inputs, backend, upstream, loss_scale=3.0, **kwargs), run(fn, inputs, "reference", upstream, loss_scale=3.0, **kwargs), torch.float32)


# CPU: the half types and fp64 (fp32 is the other tests' dtype); CUDA: the training dtypes.
DTYPES = {"cpu": (torch.float16, torch.bfloat16, torch.float64), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
DTYPE_PARAMS = [pytest.param(*p.values, dtype, id=f"{p.id}-{str(dtype).removeprefix('torch.')}", marks=p.marks)
                for p in on_devices(CPU_FUSED + CUDA_FUSED) for dtype in DTYPES[p.values[1]]]


@pytest.mark.parametrize("backend,device,dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_fused_dtypes(backend, device, dtype, name, fn, kwargs):
    """fp32 and fp64 against the reference in the same format; bf16 and fp16 against the float64
    reference of the same inputs: gradients (in the input's format) within 2 ulps of it and the fp32
    loss within fp32 rounding, a bound that even the exact loss rounded to bf16 or fp16 fails."""
    use_backend(backend, device)
    inputs = make_inputs(name, (3, 2, 5, 6), dtype, device=device)
    got = run(fn, inputs, backend, **kwargs)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if dtype in (torch.float32, torch.float64):
        assert_matches(got, run(fn, inputs, "reference", **kwargs), dtype)
        return
    want_out, want_grads = run(fn, [t.double() for t in inputs], "reference", **kwargs)
    eps = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[dtype]
    slack = 64 * 2.0**-24  # fp32 arithmetic, relative to the largest value (cancelling terms, sums)

    def off(a, b, rtol):  # how far beyond |a - b| <= rtol |b| + slack max |b| an entry lies
        a, b = a.double().cpu(), b.cpu()
        return ((a - b).abs() - rtol * b.abs() - slack * b.abs().max()).max().item()

    assert off(got[0], want_out, 0) <= 0
    assert off(want_out.to(dtype), want_out, 0) > 0  # a loss held in the input's format fails the bound
    for i, (a, b) in enumerate(zip(got[1], want_grads)):
        assert (a is None) == (b is None), f"gradient {i}: one backend returns None"
        if a is not None:
            assert a.dtype == dtype and a.shape == b.shape
            assert off(a, b, 2 * eps) <= 0, f"gradient {i}"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_fused_non_contiguous(backend, name, fn, kwargs):
    use_backend(backend)
    inputs = make_inputs(name, (3, 2, 5, 4), permuted=True)
    assert not inputs[0].is_contiguous()
    upstream = torch.tensor([0.5, -2.0, 1.0])
    assert_matches(run(fn, inputs, backend, upstream, **kwargs), run(fn, inputs, "reference", upstream, **kwargs), torch.float32)


@pytest.mark.parametrize("backend,device", on_devices([("reference", "cpu"), *CPU_FUSED, ("reference", "cuda"), *CUDA_FUSED]))
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
@pytest.mark.parametrize("nan_input", [0, 1])
def test_nan_samples_are_dropped(backend, device, name, fn, kwargs, nan_input):
    """A NaN anywhere in a sample zeroes its loss and gradients; the other samples are untouched."""
    use_backend(backend, device)
    inputs = make_inputs(name, (4, 3, 5, 5), device=device)
    poisoned = [t.clone() for t in inputs]
    poisoned[nan_input][2].view(-1)[7] = float("nan")
    out, grads = run(fn, poisoned, backend, **kwargs)
    keep = [0, 1, 3]
    clean_out, clean_grads = run(fn, [t[keep] for t in inputs], "reference", **kwargs)
    assert out[2] == 0
    torch.testing.assert_close(out[keep], clean_out, rtol=1e-4, atol=1e-5)
    for g, cg in zip(grads, clean_grads):
        if g is None:
            continue
        assert torch.all(g[2] == 0), "the NaN sample must get a zero gradient"
        torch.testing.assert_close(g[keep], cg, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_official_sid_vectors(backend, testvectors):
    use_backend(backend)
    vectors = load_file(str(testvectors / "sid_official_loss.safetensors"))
    prefixes = sorted(k[: -len(".y")] for k in vectors if k.startswith("sid.") and k.endswith(".y"))
    assert len(prefixes) == 6
    for prefix in prefixes:
        alpha = float(prefix[len("sid.a") :].rsplit(".", 1)[0])
        v = {name: vectors[f"{prefix}.{name}"] for name in ("y", "y_real", "y_fake", "loss", "grad_out", "grad_y", "grad_y_real", "grad_y_fake")}
        out, grads = run(sid_loss, [v["y"], v["y_real"], v["y_fake"]], backend, v["grad_out"], alpha=alpha)
        torch.testing.assert_close(out, v["loss"], rtol=1e-10, atol=1e-9, msg=prefix)
        for got, key in zip(grads, ("grad_y", "grad_y_real", "grad_y_fake")):
            torch.testing.assert_close(got, v[key], rtol=1e-10, atol=1e-12, msg=f"{prefix}.{key}")
    out = dsm_loss(vectors["dsm.pred"], vectors["dsm.target"], vectors["dsm.sigma"], reduction="none", backend=backend)
    torch.testing.assert_close(out, vectors["dsm.loss"], rtol=1e-10, atol=1e-8)


# DMD's loss value 0.5|y - sg(y - g)|^2 = 0.5|g|^2 does not move with y (its gradient is the
# surrogate direction g), so finite differences cannot check it; it is checked against the reference.
# Triton on the CPU runs in its interpreter (seconds per gradcheck): its kernels' own float64
# gradcheck (tests/test_triton_kernels.py) covers each loss at its defaults, so here Triton checks
# the options that change its math (SiD's alpha, SIM's c and distance, DSM's sigma_data) at one
# reduction (reductions are applied to the kernel's per-sample output alike for every backend).
TRITON_GRADCHECK = {"sid-alpha=0.5-divisor=none", "sim-distance=l2-divisor=mean_abs", "sim-c=0.5-divisor=mean_abs",
                    "dsm-sigma_data=1.0"}
GRADCHECK_PARAMS = [pytest.param(backend, name, fn, kwargs, reduction, id=f"{reduction}-{cid}-{backend}")
                    for backend in FUSED for cid, (name, fn, kwargs) in zip(CASE_IDS, CASES) if name != "dmd"
                    for reduction in ("none", "batchmean")
                    if backend != "triton" or (reduction == "batchmean" and cid in TRITON_GRADCHECK)]


@pytest.mark.parametrize("backend,name,fn,kwargs,reduction", GRADCHECK_PARAMS)
def test_gradcheck_float64(backend, name, fn, kwargs, reduction):
    """Numerical against analytic gradients; the stop-gradient divisor is passed explicitly."""
    use_backend(backend)
    inputs = make_inputs(name, (2, 3, 4), torch.float64)
    kwargs = dict(kwargs)
    if name != "dsm":
        kwargs["divisor"] = torch.tensor([0.7, 1.3], dtype=torch.float64)
    n_diff = 2 if name == "dsm" else 3
    tensors = [t.clone().requires_grad_(i < n_diff) for i, t in enumerate(inputs)]

    def f(*xs):
        return fn(*xs, reduction=reduction, loss_scale=2.0, backend=backend, **kwargs)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", on_devices(CPU_FUSED + CUDA_FUSED))
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_channels_last_inputs_are_read_in_place(backend, device, name, fn, kwargs):
    """Inputs whose samples each lie as one dense block (channels_last) are not copied: the
    gradients come back in their layout and equal the reference's; mixed layouts are copied."""
    use_backend(backend, device)
    inputs = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
              for t in make_inputs(name, (3, 4, 5, 6), device=device)]
    assert not inputs[0].is_contiguous()
    got, want = run(fn, inputs, backend, **kwargs), run(fn, inputs, "reference", **kwargs)
    assert_matches(got, want, torch.float32)
    for grad, x in zip(got[1], inputs):
        if grad is not None and x.dim() == 4:
            assert grad.stride() == x.stride()
    if not (backend == "triton" and device == "cpu"):  # no copy of an input (Triton's interpreter copies its own)
        leaves = [t.detach().requires_grad_(t.dim() == 4) for t in inputs]
        with torch.profiler.profile() as prof:
            fn(*leaves, backend=backend, **kwargs)
        copies = [e.key for e in prof.key_averages() if e.key in ("aten::copy_", "aten::clone", "aten::contiguous")]
        assert not copies, copies
    mixed = [inputs[0].contiguous(), *inputs[1:]]  # one contiguous, the others channels_last
    assert_matches(run(fn, mixed, backend, **kwargs), run(fn, mixed, "reference", **kwargs), torch.float32)


@pytest.mark.parametrize("backend,device", on_devices(CPU_FUSED + CUDA_FUSED))
@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(backend, device, name, layout):
    use_backend(backend, device)
    inputs = make_inputs(name, (2, 3, 4, 2), device=device)
    if layout == "channels_last":
        inputs = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs]
    inputs = [t.requires_grad_(i < 2) for i, t in enumerate(inputs)]
    suffix = "_triton" if backend == "triton" else ""
    op = getattr(torch.ops.fastdistill, f"{name}_fused{suffix}").default
    weight = torch.tensor([0.5, 2.0], device=device)
    args = {
        "sid": (inputs[0], inputs[1], inputs[2], weight, 1.2, 0.5),
        "sim": (inputs[0], inputs[1], inputs[2], None, 1e-3, True, 0.5),
        "dmd": (inputs[0], inputs[1].detach(), inputs[2].detach(), weight, 0.5),
        "dsm": (inputs[0], inputs[1], inputs[2].detach(), 0.5, 0.5),
    }[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_compile_fullgraph_no_graph_break(backend):
    use_backend(backend)
    y, yr, yf = make_inputs("sid", (2, 3, 4, 4))

    def generator_and_fake_losses(y, yr, yf):
        return sid_loss(y, yr, yf, backend=backend, loss_scale=100.0) + sim_loss(y, yr, yf, backend=backend) + dsm_loss(yf, y, 0.7, backend=backend)

    compiled = torch.compile(generator_and_fake_losses, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (y, yr, yf)]
    eager_leaves = [t.clone().requires_grad_() for t in (y, yr, yf)]
    compiled(*leaves).backward()
    generator_and_fake_losses(*eager_leaves).backward()
    for a, b in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("backend,device", on_devices([("cpp", "cpu"), *CUDA_FUSED]))
def test_compile_inductor(backend, device):
    """Inductor (the default torch.compile backend) keeps the fused op in one graph, forward and backward."""
    use_backend(backend, device)
    y, yr, yf = make_inputs("sid", (3, 2, 4, 4), device=device)
    leaves = [t.clone().requires_grad_() for t in (y, yr, yf)]
    out = torch.compile(lambda *xs: sid_loss(*xs, backend=backend), fullgraph=True)(*leaves)
    out.backward()
    want, want_grads = run(sid_loss, [y, yr, yf], "reference")
    torch.testing.assert_close(out.detach(), want.mean())
    for g, w in zip((leaf.grad for leaf in leaves), want_grads):
        torch.testing.assert_close(g, w / 3)


@pytest.mark.parametrize("backend,device", on_devices([("cpp", "cpu"), *CUDA_FUSED]))
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_large_samples_small_batch(backend, device, name, fn, kwargs):
    """Two samples of 98,304 values with a NaN in the second one's last value: on a GPU both
    kernels split each sample over several blocks / programs (fewer samples than 2 x #SMs)."""
    use_backend(backend, device)
    inputs = make_inputs(name, (2, 3, 128, 256), device=device)
    inputs[0][1, -1, -1, -1] = float("nan")
    upstream = torch.tensor([0.7, -1.3], device=device)
    assert_matches(run(fn, inputs, backend, upstream, **kwargs), run(fn, inputs, "reference", upstream, **kwargs), torch.float32)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_reductions_and_loss_scale(backend, reduction):
    use_backend(backend)
    y, yr, yf = make_inputs("sid", (5, 3, 4, 4))
    per_sample = sid_loss(y, yr, yf, reduction="none", backend="reference")
    want = per_sample.mean() if reduction == "batchmean" else per_sample.sum()
    got = sid_loss(y, yr, yf, reduction=reduction, loss_scale=100.0, backend=backend)
    torch.testing.assert_close(got, 100.0 * want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", FUSED)
def test_retained_graph_gives_same_gradients_twice(backend):
    use_backend(backend)
    leaves = [t.requires_grad_() for t in make_inputs("sid", (3, 2, 4))]
    loss = sid_loss(*leaves, backend=backend)
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    first = [g.clone() for g in first]
    loss.backward(retain_graph=True)
    loss.backward()
    for f, leaf in zip(first, leaves):
        torch.testing.assert_close(leaf.grad, 2 * f)


def test_modules_wrap_functional():
    y, yr, yf = make_inputs("sid", (3, 2, 4))
    sigma = torch.tensor([0.1, 1.0, 10.0])
    assert torch.equal(SiDLoss(alpha=0.5, backend="reference")(y, yr, yf), sid_loss(y, yr, yf, alpha=0.5, backend="reference"))
    assert torch.equal(SIMLoss(distance="l2", backend="reference")(y, yr, yf), sim_loss(y, yr, yf, distance="l2", backend="reference"))
    assert torch.equal(DMDLoss(backend="reference")(y, yr, yf), dmd_loss(y, yr, yf, backend="reference"))
    assert torch.equal(DSMLoss(backend="reference")(y, yr, sigma), dsm_loss(y, yr, sigma, backend="reference"))


def test_sim_l2_is_sid_with_alpha_one():
    y, yr, yf = make_inputs("sid", (4, 3, 5, 5))
    torch.testing.assert_close(
        sim_loss(y, yr, yf, distance="l2", divisor="mean_abs", backend="reference"), sid_loss(y, yr, yf, alpha=1.0, backend="reference")
    )


# --- bad input ----------------------------------------------------------------------------

GOOD = make_inputs("sid", (2, 3, 4))


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((GOOD[0], GOOD[1][:, :2], GOOD[2]), {}, ValueError, "y_real has shape"),
        ((GOOD[0], GOOD[1], GOOD[2].double()), {}, TypeError, "y_fake is torch.float64"),
        ((GOOD[0], GOOD[1], GOOD[2].to("meta")), {}, ValueError, "y_fake is on meta"),
        ((GOOD[0].long(), GOOD[1].long(), GOOD[2].long()), {}, TypeError, "y must be a floating-point"),
        ((torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0)), {}, ValueError, "leading batch dimension"),
        ((GOOD[0][:0], GOOD[1][:0], GOOD[2][:0]), {}, ValueError, "empty batch"),
        (tuple(GOOD), {"alpha": float("nan")}, ValueError, "alpha must be a finite"),
        (tuple(GOOD), {"alpha": float("inf")}, ValueError, "alpha must be a finite"),
        (tuple(GOOD), {"divisor": "median"}, ValueError, "divisor must be one of"),
        (tuple(GOOD), {"divisor": torch.ones(3)}, ValueError, r"divisor must have shape \(2,\)"),
        (tuple(GOOD), {"reduction": "avg"}, ValueError, "reduction must be one of"),
        (tuple(GOOD), {"reduction": "mean"}, ValueError, "ambiguous.*batchmean"),
        (tuple(GOOD), {"backend": "fortran"}, ValueError, "unknown backend 'fortran'"),
        (tuple(GOOD), {"backend": "cuda"}, RuntimeError, "backend 'cuda' is not available for cpu"),
    ],
)
def test_sid_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sid_loss(*args, **kwargs)


@pytest.mark.parametrize("c", [float("nan"), float("inf"), 0.0, -1.0])
def test_sim_bad_c(c):
    with pytest.raises(ValueError, match="c must be"):
        sim_loss(*GOOD, c=c)


def test_dsm_bad_sigma():
    with pytest.raises(ValueError, match="sigma must hold one value per sample"):
        dsm_loss(GOOD[0], GOOD[1], torch.ones(3))
    with pytest.raises(ValueError, match="sigma must be a finite"):
        dsm_loss(GOOD[0], GOOD[1], math.nan)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_dsm_eps_weighting(backend):
    """``weighting="eps"`` is ``sum_i (pred - target)^2 / sigma^2`` (a VP teacher's epsilon MSE),
    gradient included, and a sample with a non-finite sigma still contributes exactly zero."""
    if not backend_status(backend, "cpu")[0]:
        pytest.skip(f"backend {backend} unavailable")
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.03, 1.0, 3.0, 150.0], dtype=torch.float64)
    got = dsm_loss(pred, target, sigma, weighting="eps", loss_scale=2.0, backend=backend)
    torch.testing.assert_close(got, 2 * (((pred - target) ** 2).sum((1, 2, 3)) / sigma**2).mean())
    assert torch.autograd.gradcheck(lambda p: dsm_loss(p, target, sigma, weighting="eps", backend=backend), (pred,))
    sigma[2] = math.inf
    per = dsm_loss(pred, target, sigma, weighting="eps", reduction="none", backend=backend)
    assert per[2] == 0 and torch.isfinite(per).all()
    with pytest.raises(ValueError, match="weighting must be one of"):
        dsm_loss(pred, target, sigma, weighting="snr")


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("FASTDISTILL_BACKEND", "reference")
    from fastdistill.ops import resolve_backend

    assert resolve_backend("auto", "cpu").name == "reference"
    monkeypatch.setenv("FASTDISTILL_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        resolve_backend("auto", "cpu")
    assert resolve_backend("reference", "cpu").name == "reference"
