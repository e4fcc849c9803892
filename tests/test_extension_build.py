"""The compiled extension fastdistill._C: op schemas, kernel registration, and the raw ops
against reference.py (float64, odd shapes, NaN samples). The public API is tested in
test_losses.py; this file checks the C++ contract directly."""
from __future__ import annotations

import zlib

import pytest
import torch

from fastdistill.ops import reference

_C = pytest.importorskip("fastdistill._C", reason="extension not built (pip install --no-build-isolation -e .)")
OPS = torch.ops.fastdistill

SCHEMAS = {
    "sid_fused": "fastdistill::sid_fused(Tensor y, Tensor y_real, Tensor y_fake, Tensor? weight, float alpha, float scale) -> (Tensor, Tensor, Tensor, Tensor)",
    "sim_fused": "fastdistill::sim_fused(Tensor y, Tensor y_real, Tensor y_fake, Tensor? weight, float c, bool pseudo_huber, float scale) -> (Tensor, Tensor, Tensor, Tensor)",
    "dmd_fused": "fastdistill::dmd_fused(Tensor y, Tensor y_real, Tensor y_fake, Tensor? weight, float scale) -> (Tensor, Tensor)",
    "dsm_fused": "fastdistill::dsm_fused(Tensor pred, Tensor target, Tensor sigma, float sigma_data, float scale) -> (Tensor, Tensor)",
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_and_cpu_kernel(name):
    op = getattr(OPS, name).default
    assert str(op._schema) == SCHEMAS[name]
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastdistill::{name}", "CPU")


def _reference(name, xs, kw):
    """Per-sample loss and the gradients the op returns, by autograd through reference.py."""
    diff = {"sid": 3, "sim": 3, "dmd": 1, "dsm": 1}[name]
    leaves = [x.detach().clone().requires_grad_(i < diff) for i, x in enumerate(xs)]
    loss = getattr(reference, name)(*leaves, **kw)
    grads = torch.autograd.grad(loss.sum(), leaves[:diff])
    return loss.detach(), grads


def _fused(name, xs, kw):
    if name == "dsm":
        return OPS.dsm_fused(*xs, kw["sigma_data"], kw["scale"])
    if name == "sid":
        return OPS.sid_fused(*xs, kw["weight"], kw["alpha"], kw["scale"])
    if name == "sim":
        return OPS.sim_fused(*xs, kw["weight"], kw["c"], kw["pseudo_huber"], kw["scale"])
    return OPS.dmd_fused(*xs, kw["weight"], kw["scale"])


def _case(name, shape, dtype, given_weight, nan_rows=()):
    g = torch.Generator().manual_seed(zlib.crc32(repr((name, shape)).encode()))
    n = 2 if name == "dsm" else 3
    xs = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(n)]
    for r in nan_rows:
        xs[r % n].view(shape[0], -1)[r, -1] = float("nan")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if name == "dsm":
        xs.append(torch.exp(torch.randn(shape[0], generator=g, dtype=torch.float64) - 1.2).to(acc))
        return xs, {"sigma_data": 0.5, "scale": 0.3}
    kw = {"weight": (torch.rand(shape[0], generator=g, dtype=torch.float64) + 0.5).to(acc) if given_weight else None, "scale": 0.3}
    if name == "sid":
        kw["alpha"] = 1.2
    if name == "sim":
        kw.update(c=1e-3, pseudo_huber=True)
    return xs, kw


@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1), (1, 3, 16, 16), (5, 2, 33), (3, 40000)])
@pytest.mark.parametrize("given_weight", [False, True])
def test_matches_reference_float64(name, shape, given_weight):
    if name == "dsm" and given_weight:
        pytest.skip("dsm has no weight")
    nan_rows = (1,) if shape[0] > 2 else ()
    xs, kw = _case(name, shape, torch.float64, given_weight, nan_rows)
    ref_loss, ref_grads = _reference(name, xs, kw)
    out = _fused(name, xs, kw)
    assert out[0].dtype == torch.float64 and out[0].shape == (shape[0],)
    torch.testing.assert_close(out[0], ref_loss, rtol=1e-10, atol=1e-10)
    assert len(out) - 1 == len(ref_grads)
    for got, want in zip(out[1:], ref_grads):
        assert got.dtype == torch.float64 and got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for r in nan_rows:
        assert out[0][r] == 0 and all(bool((g.view(shape[0], -1)[r] == 0).all()) for g in out[1:])


def _on(device, xs, kw):
    """The case's tensors moved to `device`."""
    return [x.to(device) for x in xs], {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


#: a format's machine epsilon: one rounding to it is within eps / 2 of the value, relative
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}
#: what fp32 arithmetic of the kernels adds, relative to a case's largest value (the terms of a
#: gradient entry can cancel; a loss is a sum over the sample)
FP32_SLACK = 64 * 2.0**-24


def _exact(name, xs, kw):
    """The reference in float64 on the inputs as given (upcast exactly)."""
    return _reference(name, [x.double() for x in xs],
                      {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


def _assert_within(got, want, rtol):
    """|got - want| <= rtol |want| + FP32_SLACK max |want|, entry by entry."""
    got, want = got.double().cpu(), want.cpu()
    bound = rtol * want.abs() + FP32_SLACK * want.abs().max()
    worst = ((got - want).abs() - bound).max().item()
    assert worst <= 0, f"off by {worst:.3g} beyond the bound (rtol {rtol:.3g})"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 3, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
def test_low_precision_dtypes(name, dtype, shape, device):
    """Against the float64 reference of the same inputs: the gradients, written in the input's
    format, within 2 ulps of it; the fp32 loss within fp32 rounding, which a kernel accumulating
    in the input's format fails (the last assertion: even the exact loss rounded to that format). On a GPU, samples of 192 values
    take the one-block-per-sample kernel, those of 12,288 the split one; both with vector loads."""
    xs, kw = _on(device, *_case(name, shape, dtype, False, nan_rows=(2,)))
    want_loss, want_grads = _exact(name, xs, kw)
    out = _fused(name, xs, kw)
    assert out[0].dtype == torch.float32
    _assert_within(out[0], want_loss, 0)
    for got, want in zip(out[1:], want_grads):
        assert got.dtype == dtype
        _assert_within(got, want, 2 * EPS[dtype])
    if dtype != torch.float32:  # an accumulator in the input's format ends with a number of that format:
        with pytest.raises(AssertionError, match="beyond the bound"):  # even the best one is refused
            _assert_within(want_loss.to(dtype), want_loss, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [12_268, 12_261])
@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
def test_cuda_ragged_split_slices_and_infinities(name, length, dtype):
    """Two samples of about 12k values take the split kernel in 3 slices whose last is shorter
    (12,268: vector loads; 12,261: scalar ones); +inf in the last slice of one sample and -inf in
    the first of another drop exactly those samples, although the CUDA build uses --use_fast_math."""
    xs, kw = _case(name, (4, length), dtype, False)
    xs[0][1, -1] = float("inf")
    xs[-1 if name != "dsm" else 1][3, 5] = float("-inf")
    want = _fused(name, xs, kw)  # the CPU kernel: equal to reference.py (test_matches_reference_float64)
    got = _fused(name, *_on("cuda", xs, kw))
    for a, b in zip(want, got):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=1e-7)
    for r in (1, 3):
        assert got[0][r].item() == 0 and all(bool((g[r] == 0).all()) for g in got[1:])
    assert bool(got[0][[0, 2]].ne(0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
def test_large_outputs_match_reference(name, dtype):
    """Over 8 MiB of gradients per call: written with streaming stores. An odd sample length
    leaves every sample but the first unaligned, so the scalar head and tail run too."""
    xs, kw = _case(name, (3, 700_001), dtype, False, nan_rows=(1,))
    ref_loss, ref_grads = _reference(name, xs, kw)
    out = _fused(name, xs, kw)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out[0], ref_loss.to(out[0].dtype), rtol=tol, atol=tol * ref_loss.abs().max().item())
    for got, want in zip(out[1:], ref_grads):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert out[0][1] == 0 and all(bool((g[1] == 0).all()) for g in out[1:])


@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
@pytest.mark.parametrize("shape", [(40, 3, 32, 32), (10, 3, 64, 64)])
def test_samples_shared_across_threads_match_reference(name, shape):
    """Two threads taking samples from the shared counter, several per task (first shape) or one
    (second), each prefetching the next sample's inputs; NaN rows at and after task boundaries."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        xs, kw = _case(name, shape, torch.float64, False, nan_rows=(4, 5, 9))
        ref_loss, ref_grads = _reference(name, xs, kw)
        out = _fused(name, xs, kw)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out[0], ref_loss, rtol=1e-10, atol=1e-10)
    for got, want in zip(out[1:], ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for r in (4, 5, 9):
        assert out[0][r] == 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(RuntimeError, match="same shape"):
        OPS.sid_fused(torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 3), None, 1.2, 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sid", "sim", "dmd", "dsm"])
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 64, 64), (300, 3, 8, 8)])
def test_cuda_matches_cpu(name, shape):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastdistill::{name}_fused", "CUDA")
    xs, kw = _case(name, shape, torch.float64, False, nan_rows=(1,))
    cpu = _fused(name, xs, kw)
    gpu = _fused(name, *_on("cuda", xs, kw))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)


# --- the CPU output cache (csrc/cpu/losses_cpu.cpp, OutputCache) ------------------------------

CACHED_SHAPE = (2, 3, 256, 256)  # 1.5 MiB per fp32 tensor: above the cache's 1 MiB floor
CACHE_CAP = 256 << 20


def _sid_grads(xs):
    return OPS.sid_fused(*xs, None, 1.2, 0.5)[1:]


def _assert_same(xs, ys):
    assert all(torch.equal(x, y) for x, y in zip(xs, ys))


def test_output_cache_reuses_freed_gradients_and_never_live_ones():
    OPS.empty_cpu_output_cache()
    xs, _ = _case("sid", CACHED_SHAPE, torch.float32, False)
    first = _sid_grads(xs)
    first_ptrs = {g.data_ptr() for g in first}
    second = _sid_grads(xs)  # `first` is alive: its blocks must not be handed out again
    assert first_ptrs.isdisjoint(g.data_ptr() for g in second)
    _assert_same(first, second)
    for grad in first:
        grad.fill_(float("nan"))  # stale contents must be overwritten, not leak into the next call
    del first, grad
    third = _sid_grads(xs)
    assert {g.data_ptr() for g in third} == first_ptrs
    _assert_same(second, third)
    del second, third
    assert OPS.empty_cpu_output_cache() == 6 * xs[0].nbytes
    assert OPS.empty_cpu_output_cache() == 0


def test_output_cache_hands_out_only_blocks_of_the_requested_size():
    OPS.empty_cpu_output_cache()
    xs, _ = _case("sid", CACHED_SHAPE, torch.float32, False)
    freed = {g.data_ptr() for g in _sid_grads(xs)}
    bigger, _ = _case("sid", (3, *CACHED_SHAPE[1:]), torch.float32, False)
    grads = _sid_grads(bigger)
    assert freed.isdisjoint(g.data_ptr() for g in grads)
    ref_loss, ref_grads = _reference("sid", bigger, {"weight": None, "alpha": 1.2, "scale": 0.5})
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert OPS.empty_cpu_output_cache() == 3 * xs[0].nbytes


def test_output_cache_keeps_at_most_its_cap():
    OPS.empty_cpu_output_cache()
    per_block = 16 << 20
    pred, target = torch.randn(2, per_block // 8), torch.randn(2, per_block // 8)
    sigma = torch.ones(2)
    live = [OPS.dsm_fused(pred, target, sigma, 0.5, 1.0)[1] for _ in range(CACHE_CAP // per_block + 2)]
    assert len({g.data_ptr() for g in live}) == len(live)
    del live
    assert OPS.empty_cpu_output_cache() == CACHE_CAP


def test_output_cache_reports_to_the_memory_profiler():
    """Cached blocks show up in memory profiles like default allocations: +size out, -size back."""
    from torch.profiler import ProfilerActivity, profile

    xs, _ = _case("sid", CACHED_SHAPE, torch.float32, False)
    _sid_grads(xs)  # warm the cache (the result is dropped at once): the profiled call reuses blocks
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        grads = _sid_grads(xs)
        del grads
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and abs(e.nbytes()) == xs[0].nbytes]
    assert sorted(sizes) == [-xs[0].nbytes] * 3 + [xs[0].nbytes] * 3
    OPS.empty_cpu_output_cache()


def test_output_cache_under_concurrent_calls():
    """Threads calling the op and freeing results at once never get each other's live blocks."""
    import threading

    OPS.empty_cpu_output_cache()
    xs, _ = _case("sid", CACHED_SHAPE, torch.float32, False)
    want = [g.clone() for g in _sid_grads(xs)]
    failures = []

    def work():
        for _ in range(10):
            grads = _sid_grads(xs)
            if not all(torch.equal(g, w) for g, w in zip(grads, want)):
                failures.append("wrong result")
            for grad in grads:
                grad.add_(1.0)  # a block shared with another thread would break that thread's check

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    OPS.empty_cpu_output_cache()
