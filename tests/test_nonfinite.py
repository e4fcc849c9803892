"""The non-finite rule (docs/losses.md, "Non-finite samples"), identical in every backend.

A sample with a NaN, +inf or -inf anywhere in its inputs (y, y_real, y_fake; dsm: pred, target),
or whose divisor entry / dsm sigma is not finite, has loss exactly 0 and gradient exactly 0 for
every input; the other samples get what they get without it. Each batch below carries one NaN
sample, one +inf sample and one -inf sample at once. Inputs with an empty sample are rejected.
"""
import math

import pytest
import torch

from fastdistill.losses import dmd_loss, dsm_loss, sid_loss, sim_loss
from fastdistill.ops import triton_kernels as tk

from .test_losses import make_inputs, run, use_backend

BACKENDS = ["reference", "cpp", "triton"]
# (loss name, function, keyword arguments)
CASES = [
    ("sid", sid_loss, dict(alpha=1.2)),
    ("sid", sid_loss, dict(alpha=0.5, divisor="none")),
    ("sim", sim_loss, dict()),
    ("sim", sim_loss, dict(distance="l2", divisor="mean_abs")),
    ("dmd", dmd_loss, dict()),
    ("dmd", dmd_loss, dict(divisor="none")),
    ("dsm", dsm_loss, dict()),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for name, _, kw in CASES]
# sample -> the bad value put into it; samples 0, 2, 5 stay clean
BAD = {1: float("nan"), 3: float("inf"), 4: -float("inf")}
KEEP = [0, 2, 5]
SHAPE = (6, 3, 5, 5)
# (case, input position) for every tensor input of every case
POSITIONS = [(case, position) for case in CASES for position in range(2 if case[0] == "dsm" else 3)]
POSITION_IDS = [f"{cid}-input{position}" for cid, case in zip(CASE_IDS, CASES) for position in range(2 if case[0] == "dsm" else 3)]

# numpy (the Triton interpreter) warns about the inf - inf it is fed on purpose
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _poison(inputs, position, shape=SHAPE):
    poisoned = [t.clone() for t in inputs]
    n = math.prod(shape[1:])
    for k, (sample, value) in enumerate(BAD.items()):
        poisoned[position][sample].view(-1)[(7 + 11 * k) % n] = value  # a different element each
    return poisoned


def _n_inputs(name):
    return 2 if name == "dsm" else 3


def _assert_rule(backend, fn, kwargs, inputs, poisoned, bad, keep):
    """Exact zeros for the bad samples, the clean result for the others, a finite batch mean."""
    out, grads = run(fn, poisoned, backend, **kwargs)
    assert out.shape == (poisoned[0].shape[0],)
    for b in bad:
        assert out[b].item() == 0.0, f"sample {b}: loss {out[b].item()}, expected exactly 0"
        for i, g in enumerate(grads):
            if g is not None and g.dim() > 1:
                assert torch.count_nonzero(g[b]).item() == 0, f"sample {b}: gradient {i} is not exactly 0"
    assert torch.isfinite(out).all()
    for g in grads:
        if g is not None:
            assert torch.isfinite(g).all()
    # the others: as without the bad samples, in this backend and in the reference
    clean_in = [t[keep] for t in inputs]
    for other in sorted({backend, "reference"}):
        clean_out, clean_grads = run(fn, clean_in, other, **kwargs)
        torch.testing.assert_close(out[keep], clean_out, rtol=1e-5, atol=1e-6)
        for g, cg in zip(grads, clean_grads):
            assert (g is None) == (cg is None)
            if g is not None and g.dim() > 1:
                torch.testing.assert_close(g[keep], cg, rtol=1e-5, atol=1e-6)
    # every backend agrees with the reference on the poisoned batch itself
    if backend != "reference":
        ref_out, ref_grads = run(fn, poisoned, "reference", **kwargs)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
        for g, rg in zip(grads, ref_grads):
            assert (g is None) == (rg is None)
            if g is not None:
                torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
    # the batch mean is finite: the clean samples' sum over the full batch size, and its gradient too
    leaves = [t.detach().clone().requires_grad_(t.dim() > 1) for t in poisoned]
    mean = fn(*leaves, reduction="batchmean", backend=backend, **kwargs)
    assert torch.isfinite(mean)
    torch.testing.assert_close(mean, out[keep].sum() / out.shape[0], rtol=1e-5, atol=1e-6)
    mean.backward()
    for leaf in leaves:
        if leaf.grad is not None:
            assert torch.isfinite(leaf.grad).all()
            assert all(torch.count_nonzero(leaf.grad[b]).item() == 0 for b in bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,position", POSITIONS, ids=POSITION_IDS)
def test_nonfinite_samples_are_dropped(backend, case, position):
    """NaN in sample 1, +inf in sample 3, -inf in sample 4, all in input `position`."""
    name, fn, kwargs = case
    use_backend(backend)
    inputs = make_inputs(name, SHAPE)
    _assert_rule(backend, fn, kwargs, inputs, _poison(inputs, position), list(BAD), KEEP)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,fn,kwargs", CASES, ids=CASE_IDS)
def test_nonfinite_in_every_input_of_a_sample(backend, name, fn, kwargs):
    """The same bad value in every input of the sample (inf - inf is NaN, inf * 0 too)."""
    use_backend(backend)
    inputs = make_inputs(name, SHAPE)
    poisoned = inputs
    for position in range(_n_inputs(name)):
        poisoned = _poison(poisoned, position)
    _assert_rule(backend, fn, kwargs, inputs, poisoned, list(BAD), KEEP)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_sigma_zeroes_the_dsm_sample(backend):
    use_backend(backend)
    inputs = make_inputs("dsm", SHAPE)
    poisoned = [t.clone() for t in inputs]
    for sample, value in BAD.items():
        poisoned[2][sample] = value
    _assert_rule(backend, dsm_loss, {}, inputs, poisoned, list(BAD), KEEP)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,fn", [("sid", sid_loss), ("sim", sim_loss), ("dmd", dmd_loss)])
def test_nonfinite_divisor_zeroes_the_sample(backend, name, fn):
    use_backend(backend)
    inputs = make_inputs(name, SHAPE)
    divisor = torch.linspace(0.5, 2.0, SHAPE[0])
    for sample, value in BAD.items():
        divisor[sample] = value
    out, grads = run(fn, inputs, backend, divisor=divisor)
    want, want_grads = run(fn, [t[KEEP] for t in inputs], "reference", divisor=divisor[KEEP])
    assert all(out[b].item() == 0.0 for b in BAD)
    torch.testing.assert_close(out[KEEP], want, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, want_grads):
        if g is not None:
            assert all(torch.count_nonzero(g[b]).item() == 0 for b in BAD)
            torch.testing.assert_close(g[KEEP], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_nonfinite_low_and_double_precision(backend, name, fn, kwargs, dtype):
    """fp16 / bf16 infinities survive the upcast; fp64 uses the double math path."""
    use_backend(backend)
    inputs = make_inputs(name, SHAPE, dtype)
    for position in range(_n_inputs(name)):
        out, grads = run(fn, _poison(inputs, position), backend, **kwargs)
        clean_out, _ = run(fn, [t[KEEP] for t in inputs], backend, **kwargs)
        assert all(out[b].item() == 0.0 for b in BAD)
        assert torch.equal(out[KEEP], clean_out)
        for g in grads:
            if g is not None and g.dim() > 1:
                assert all(torch.count_nonzero(g[b]).item() == 0 for b in BAD)
                assert torch.isfinite(g).all()


@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_nonfinite_cpp_split_and_streaming_paths(name, fn, kwargs):
    """Samples split over threads (B=3 on two threads) and large outputs (streaming stores)."""
    use_backend("cpp")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for shape in [(3, 40_000), (3, 700_001)]:
            inputs = make_inputs(name, shape)
            for position in range(_n_inputs(name)):
                poisoned = [t.clone() for t in inputs]
                poisoned[position][1, -1] = float("inf") if position % 2 else -float("inf")
                out, grads = run(fn, poisoned, "cpp", **kwargs)
                want, want_grads = run(fn, poisoned, "reference", **kwargs)
                assert out[1].item() == 0.0 and want[1].item() == 0.0
                torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
                for g, w in zip(grads, want_grads):
                    if g is not None and g.dim() > 1:
                        assert torch.count_nonzero(g[1]).item() == 0
                        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
def test_nonfinite_triton_split_path(name, fn, kwargs, monkeypatch):
    """A sample split over a second grid dimension: the bad element sits in the last chunk."""
    use_backend("triton")
    monkeypatch.setattr(tk, "_FORCE_SPLITS", 3)
    shape = (3, 3, 20, 20)
    inputs = make_inputs(name, shape)
    for position in range(_n_inputs(name)):
        poisoned = [t.clone() for t in inputs]
        poisoned[position][1, 2, 19, 19] = float("inf")
        poisoned[position][2, 0, 0, 0] = -float("inf")
        out, grads = run(fn, poisoned, "triton", **kwargs)
        clean_out, clean_grads = run(fn, [t[[0]] for t in inputs], "reference", **kwargs)
        assert out[1].item() == 0.0 and out[2].item() == 0.0
        torch.testing.assert_close(out[[0]], clean_out, rtol=1e-5, atol=1e-6)
        for g, cg in zip(grads, clean_grads):
            if g is not None and g.dim() > 1:
                assert torch.count_nonzero(g[1:]).item() == 0
                torch.testing.assert_close(g[[0]], cg, rtol=1e-5, atol=1e-6)


def test_nonfinite_sample_mask_counts_inf():
    """The methods count bad samples for the loop with the same mask as the reference losses."""
    from fastdistill.ops.reference import nonfinite_sample_mask

    x = torch.zeros(5, 2, 3)
    x[1, 0, 0], x[2, 1, 2], x[3, 0, 1] = float("nan"), float("inf"), -float("inf")
    y = torch.zeros(5, 2, 3)
    y[4, 1, 1] = float("inf")
    assert nonfinite_sample_mask(x, y).tolist() == [False, True, True, True, True]


@pytest.mark.parametrize("shape", [(2, 0), (2, 3, 0)])
@pytest.mark.parametrize("name,fn,kwargs", CASES[::2], ids=CASE_IDS[::2])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_empty_samples_are_rejected(name, fn, kwargs, shape, backend):
    inputs = make_inputs(name, shape)
    with pytest.raises(ValueError, match=r"empty samples \(shape .*0 elements per sample\)"):
        fn(*inputs, backend=backend, **kwargs)
