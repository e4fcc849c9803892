"""Sliced Wasserstein and unbiased RBF MMD between point sets."""
import math

import pytest
import torch

from fastdistill.metrics import median_bandwidth, mmd_rbf, sliced_wasserstein


def _pts(n, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_sliced_wasserstein_basic():
    x = _pts(500)
    assert float(sliced_wasserstein(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(sliced_wasserstein(x, x[torch.randperm(500)])) == pytest.approx(0.0, abs=1e-12)
    # a shift by v: each projection moves by theta.v; E (theta.v)^2 = |v|^2 / d
    v = torch.tensor([0.3, -0.4])
    swd = float(sliced_wasserstein(x, x + v, num_projections=4000))
    assert swd == pytest.approx(0.5 / math.sqrt(2), rel=0.03)
    assert sliced_wasserstein(x, x + 1.0) > sliced_wasserstein(x, x + 0.1) > sliced_wasserstein(x, _pts(500, seed=1)) * 0
    # deterministic for a seed, different for another seed
    y = _pts(400, seed=2) * 1.5
    assert float(sliced_wasserstein(x, y, seed=3)) == float(sliced_wasserstein(x, y, seed=3))
    assert float(sliced_wasserstein(x, y, seed=3)) != float(sliced_wasserstein(x, y, seed=4))


def test_sliced_wasserstein_unequal_sizes_is_exact_in_1d():
    # 1-D: W2 between {0, 1} and {0, 0.5, 1}: quantile functions differ on (1/3,1/2] by 0.5 and on (1/2,2/3] by 0.5
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [0.5], [1.0]])
    expect = math.sqrt(2 * (1 / 6) * 0.25)
    assert float(sliced_wasserstein(x, y, num_projections=3)) == pytest.approx(expect, rel=1e-12)
    # duplicating every point does not change the distribution
    a = _pts(50, d=3)
    assert float(sliced_wasserstein(a, torch.cat([a, a]))) == pytest.approx(0.0, abs=1e-12)


def test_mmd_matches_direct_computation():
    x, y = _pts(40, 3, 0), _pts(30, 3, 1) + 0.5
    h = 0.8

    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * h * h))

    X, Y = x.double().tolist(), y.double().tolist()
    kxx = sum(k(X[i], X[j]) for i in range(40) for j in range(40) if i != j) / (40 * 39)
    kyy = sum(k(Y[i], Y[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    kxy = sum(k(a, b) for a in X for b in Y) / (40 * 30)
    assert float(mmd_rbf(x, y, bandwidth=h, block_size=7)) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    two = float(mmd_rbf(x, y, bandwidth=[h, 2 * h]))
    assert two == pytest.approx(float(mmd_rbf(x, y, bandwidth=h)) + float(mmd_rbf(x, y, bandwidth=2 * h)), rel=1e-10)
    biased = float(mmd_rbf(x, x, bandwidth=h, unbiased=False))
    assert biased == pytest.approx(0.0, abs=1e-12)


def test_mmd_identical_vs_shifted():
    x, x2 = _pts(800, seed=0), _pts(800, seed=1)
    same, shifted, far = (float(mmd_rbf(x, y)) for y in (x2, x2 + 0.3, x2 + 1.0))
    assert abs(same) < 2e-3 and shifted > 10 * abs(same) and far > shifted
    assert float(mmd_rbf(x, x2)) == float(mmd_rbf(x, x2))  # deterministic
    assert median_bandwidth(x) > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="dimensions"):
        sliced_wasserstein(_pts(5, 2), _pts(5, 3))
    with pytest.raises(ValueError, match="non-empty"):
        mmd_rbf(torch.zeros(0, 2), _pts(5))
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(torch.tensor([[float("nan"), 0.0]]), _pts(5))
    with pytest.raises(ValueError, match="positive"):
        mmd_rbf(_pts(5), _pts(5), bandwidth=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        mmd_rbf(_pts(1), _pts(5))
    # image-shaped inputs are flattened
    assert float(sliced_wasserstein(torch.zeros(4, 1, 2, 2), torch.zeros(4, 1, 2, 2))) == 0.0
