"""Forward+backward benchmarks of the four losses: eager reference, torch.compile'd reference and
each fused backend, side by side (pytest-benchmark groups per (op, batch, shape)).

    pytest benchmarks/                       # timings + summary table (docs/performance.md)
    pytest benchmarks/ --benchmark-disable   # smoke run: every case once (CI)

Each case reports in `extra_info`: the minimum traffic of the loss in bytes (SiD/SIM: read 3
tensors + write 3 gradients; DMD: read 3 + write 1; DSM: read 2 + write 1), the achieved GB/s
for that traffic, its fraction of a same-size `copy_` timed earlier in the session, and the
peak memory allocated during one fwd+bwd (CPU: torch.profiler memory events; CUDA:
torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from fastdistill.losses import dmd_loss, dsm_loss, sid_loss, sim_loss
from fastdistill.ops import reference, registry
from iteration_loops import peak_memory

BATCHES = (64, 256)
SHAPES = ((3, 32, 32), (3, 64, 64), (4, 64, 64))
OPS = ("sid", "sim", "dmd", "dsm")
# Tensors of the minimum traffic per element of one input: reads + gradient writes.
TRAFFIC = {"sid": 6, "sim": 6, "dmd": 4, "dsm": 3}
ALPHA, SIM_C, SIGMA_DATA = 1.2, 1e-3, 0.5

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROVIDERS = {"cpu": ("eager", "compiled", "cpp"), "cuda": ("eager", "compiled", "cuda", "triton")}


def _shape_id(shape):
    return "x".join(map(str, shape))


CASES = [(batch, shape) for batch in BATCHES for shape in SHAPES]
DEVICE_PROVIDERS = [(device, provider) for device in DEVICES for provider in PROVIDERS[device]]


def _id(v):
    return _shape_id(v) if isinstance(v, tuple) else str(v)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _make_inputs(op, device, batch, shape):
    """Inputs of one loss call; which of them need a gradient follows the methods (docs/algorithms.md)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    full = (batch, *shape)

    def rand(requires_grad):
        return torch.randn(full, generator=g).to(device).requires_grad_(requires_grad)

    if op == "dsm":  # fake-score step: the target x_g is detached
        sigma = torch.exp(torch.randn(batch, generator=g) * 1.2 - 1.2).to(device)
        return (rand(True), rand(False), sigma)
    if op == "dmd":  # teacher and fake outputs carry no gradient
        return (rand(True), rand(False), rand(False))
    return (rand(True), rand(True), rand(True))


def _api_call(op, backend):
    if op == "sid":
        return lambda y, yr, yf: sid_loss(y, yr, yf, alpha=ALPHA, divisor="mean_abs", reduction="batchmean", backend=backend)
    if op == "sim":
        return lambda y, yr, yf: sim_loss(y, yr, yf, distance="pseudo_huber", c=SIM_C, divisor="none", reduction="batchmean", backend=backend)
    if op == "dmd":
        return lambda y, yr, yf: dmd_loss(y, yr, yf, divisor="mean_abs", reduction="batchmean", backend=backend)
    return lambda p, t, s: dsm_loss(p, t, s, sigma_data=SIGMA_DATA, reduction="batchmean", backend=backend)


# The same losses as the API with the same options, as plain functions of the reference.
def _ref_sid(y, yr, yf):
    return reference.sid(y, yr, yf, None, ALPHA, 1.0 / y.shape[0]).sum()


def _ref_sim(y, yr, yf):
    ones = torch.ones(y.shape[0], device=y.device)
    return reference.sim(y, yr, yf, ones, SIM_C, True, 1.0 / y.shape[0]).sum()


def _ref_dmd(y, yr, yf):
    return reference.dmd(y, yr, yf, None, 1.0 / y.shape[0]).sum()


def _ref_dsm(p, t, s):
    return reference.dsm(p, t, s, SIGMA_DATA, 1.0 / p.shape[0]).sum()


REF_FUNCS = {"sid": _ref_sid, "sim": _ref_sim, "dmd": _ref_dmd, "dsm": _ref_dsm}


@functools.lru_cache(maxsize=None)
def _compiled(op):
    """One torch.compile wrapper per op (dynamic=False: a graph per shape, compiled on first use)."""
    return torch.compile(REF_FUNCS[op], dynamic=False)


def _loss_fn(op, provider):
    if provider == "eager":
        return _api_call(op, "reference")
    if provider == "compiled":
        return _compiled(op)
    return _api_call(op, provider)


def _provider_status(provider, device):
    if provider in ("eager", "compiled"):
        return True, ""
    return registry.backend_status(provider, device)


def _required(provider: str) -> bool:
    """FASTDISTILL_REQUIRE_BACKENDS (CI, the GPU check) names it: missing is a failure, not a skip."""
    return provider in {b.strip() for b in os.environ.get("FASTDISTILL_REQUIRE_BACKENDS", "").split(",")}


def _check_result(op, provider, inputs):
    """The timed call's loss and gradients against the eager reference on the same inputs (fp32):
    a benchmark of a wrong result is no result."""
    def once(fn):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        loss = fn(*leaves)
        loss.backward()
        return loss.detach(), [t.grad for t in leaves if t.requires_grad]

    got, want = once(_loss_fn(op, provider)), once(_loss_fn(op, "eager"))
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-6)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def _fwd_bwd(loss_fn, inputs, device):
    leaves = [t for t in inputs if t.requires_grad]

    def run():
        for t in leaves:
            t.grad = None
        loss = loss_fn(*inputs)
        loss.backward()
        _sync(device)

    return run


def _median(benchmark):
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(benchmark, "disabled", False):
        return None
    return stats.stats.median


@pytest.mark.parametrize("batch,shape", CASES, ids=_id)
@pytest.mark.parametrize("device", DEVICES)
def test_copy(benchmark, results, device, batch, shape):
    """The bandwidth yardstick: copy_ of one tensor of the benchmarked size (read 1 + write 1)."""
    benchmark.group = f"copy B={batch} {_shape_id(shape)} {device}"
    src = torch.randn(batch, *shape, device=device)
    dst = torch.empty_like(src)

    def run():
        dst.copy_(src)
        _sync(device)

    benchmark(run)
    nbytes = 2 * src.numel() * src.element_size()
    benchmark.extra_info.update(bytes=nbytes, threads=torch.get_num_threads())
    t = _median(benchmark)
    if t is not None:
        benchmark.extra_info["GB/s"] = nbytes / t / 1e9
        results["copy"][(device, batch, _shape_id(shape))] = {"time": t, "gbs": nbytes / t / 1e9}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("batch,shape", CASES, ids=_id)
@pytest.mark.parametrize("device,provider", DEVICE_PROVIDERS, ids=_id)
def test_loss(benchmark, results, request, op, device, batch, shape, provider):
    ok, reason = _provider_status(provider, device)
    if not ok:
        if _required(provider):
            pytest.fail(f"{provider} is required (FASTDISTILL_REQUIRE_BACKENDS) but cannot run on {device}: {reason}")
        pytest.skip(reason)
    disabled = request.config.getoption("benchmark_disable", False)
    if provider == "compiled" and disabled and not request.config.getoption("--fd-compile-all"):
        if (batch, shape) != (BATCHES[0], SHAPES[0]):
            pytest.skip("smoke run: the compiled reference is exercised on the smallest case only (--fd-compile-all)")

    shape_id = _shape_id(shape)
    benchmark.group = f"{op} B={batch} {shape_id} {device}"
    inputs = _make_inputs(op, device, batch, shape)
    if provider != "eager":
        _check_result(op, provider, inputs)
    run = _fwd_bwd(_loss_fn(op, provider), inputs, device)
    run()  # warm-up (and compilation for the compiled provider)
    peak = peak_memory(run, device)

    benchmark(run)

    elem_bytes = inputs[0].numel() * inputs[0].element_size()
    nbytes = TRAFFIC[op] * elem_bytes
    info = {"bytes": nbytes, "tensor_bytes": elem_bytes, "peak_bytes": peak, "peak_tensors": peak / elem_bytes,
            "threads": torch.get_num_threads()}
    t = _median(benchmark)
    record = {"time": t, "bytes": nbytes, "peak_bytes": peak}
    if t is not None:
        info["GB/s"] = nbytes / t / 1e9
        copy = results["copy"].get((device, batch, shape_id))
        if copy:
            info["fraction_of_copy_bw"] = info["GB/s"] / copy["gbs"]
    eager = results["loss"].get((op, device, batch, shape_id, "eager"))
    if eager and eager.get("peak_bytes"):
        info["peak_vs_eager"] = peak / eager["peak_bytes"]
    benchmark.extra_info.update(info)
    results["loss"][(op, device, batch, shape_id, provider)] = record
