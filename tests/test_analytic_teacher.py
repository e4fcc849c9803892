"""Analytic Gaussian-mixture teachers: exact denoiser, score, sampling, errors."""
import math

import pytest
import torch

from fastdistill.teachers.analytic import (
    GaussianMixtureTeacher,
    eight_gaussians,
    grid_of_gaussians,
    single_gaussian,
)
from fastdistill.teachers.base import Denoiser


def _rand_spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_protocol_and_attributes():
    t = eight_gaussians()
    assert isinstance(t, Denoiser) and isinstance(t, torch.nn.Module)
    assert t.data_shape == (2,) and t.img_channels == 2 and t.img_resolution == 1 and t.label_dim == 0
    # sigma_data = sqrt((radius^2 + 2 std^2)/2) for a centred ring
    assert t.sigma_data == pytest.approx(math.sqrt((1 + 2 * 0.05**2) / 2), rel=1e-9)
    img = GaussianMixtureTeacher(torch.zeros(3, 1, 4, 4), stds=0.5)
    assert (img.img_channels, img.img_resolution, img.data_shape) == (1, 4, (1, 4, 4))
    assert GaussianMixtureTeacher(torch.zeros(1, 2), stds=1.0, sigma_data=0.5).sigma_data == 0.5


def test_single_gaussian_closed_form_full_cov():
    g = torch.Generator().manual_seed(0)
    d = 5
    C = _rand_spd(d, g)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    t = single_gaussian(mu, C)
    x = torch.randn(6, d, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 5.0, 80.0], dtype=torch.float64)
    out = t(x, sigma)
    assert out.dtype == torch.float64
    eye = torch.eye(d, dtype=torch.float64)
    for i in range(6):
        ref = mu + C @ torch.linalg.solve(C + sigma[i] ** 2 * eye, x[i] - mu)
        torch.testing.assert_close(out[i], ref, atol=1e-10, rtol=1e-9)
    # float32 in -> float32 out
    assert t(x.float(), sigma.float()).dtype == torch.float32


@pytest.mark.parametrize("kind", ["iso", "diag", "full"])
def test_score_matches_autograd_of_log_density(kind):
    g = torch.Generator().manual_seed(1)
    K, d = 4, 3
    means = torch.randn(K, d, generator=g, dtype=torch.float64) * 2
    if kind == "iso":
        t = GaussianMixtureTeacher(means, stds=torch.rand(K, generator=g, dtype=torch.float64) + 0.1,
                                   weights=torch.rand(K, generator=g, dtype=torch.float64) + 0.1)
    elif kind == "diag":
        t = GaussianMixtureTeacher(means, torch.rand(K, d, generator=g, dtype=torch.float64) + 0.05)
    else:
        t = GaussianMixtureTeacher(means, torch.stack([_rand_spd(d, g) for _ in range(K)]))
    for s in [0.01, 0.3, 2.0, 40.0]:
        x = (torch.randn(8, d, generator=g, dtype=torch.float64) * (2 + s)).requires_grad_(True)
        sigma = torch.full((8,), s, dtype=torch.float64)
        (grad,) = torch.autograd.grad(t.log_prob(x, sigma).sum(), x)
        score = (t(x.detach(), sigma) - x.detach()) / s**2
        torch.testing.assert_close(score, grad, atol=1e-8 * max(1.0, 1 / s**2), rtol=1e-6)


def test_log_prob_normalised_at_sigma():
    """The noised density integrates to one (2-D grid quadrature)."""
    t = eight_gaussians(std=0.1)
    h = 0.02
    c = torch.arange(-2.0, 2.0, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    mass = t.log_prob(pts, 0.2).exp().sum() * h * h
    assert float(mass) == pytest.approx(1.0, abs=1e-3)


def test_denoiser_matches_monte_carlo_posterior_mean():
    """E[x0 | x] by self-normalised importance sampling over exact data samples."""
    t = eight_gaussians(std=0.2)
    g = torch.Generator().manual_seed(2)
    x0 = t.sample(200_000, g, dtype=torch.float64)
    sigma = 0.5
    x = torch.tensor([[0.3, 0.2], [-1.0, 0.1], [0.0, 0.0]], dtype=torch.float64)
    logw = -((x[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    torch.testing.assert_close(t(x, torch.full((3,), sigma, dtype=torch.float64)), mc, atol=1e-2, rtol=0)


def test_extreme_sigmas_are_finite():
    t = eight_gaussians(std=0.01)
    x = torch.randn(16, 2) * 100
    for s in [1e-4, 0.002, 80.0, 1e4]:
        out = t(x, torch.full((16,), s))
        assert torch.isfinite(out).all()
    # very small sigma: the denoiser is nearly the identity near a mode
    x = torch.tensor([[1.0, 0.001]])
    torch.testing.assert_close(t(x, torch.tensor([1e-4])), x, atol=1e-4, rtol=0)
    # huge sigma: the data mean (0)
    torch.testing.assert_close(t(torch.tensor([[3.0, -4.0]]), torch.tensor([1e4])), torch.zeros(1, 2), atol=1e-4, rtol=0)


def test_sample_statistics_and_determinism():
    t = grid_of_gaussians(3, spacing=1.0, std=0.1, weights=torch.arange(1.0, 10.0))
    a = t.sample(50_000, torch.Generator().manual_seed(0))
    b = t.sample(50_000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (50_000, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a.mean(0).double(), t.mean(), atol=0.02, rtol=0)
    assert float(a.var(0).mean()) == pytest.approx(float(t.variance_per_dim()), rel=0.03)


def test_accepts_image_like_inputs():
    t = eight_gaussians()
    x = torch.randn(5, 2)
    s = torch.full((5,), 0.7)
    torch.testing.assert_close(t(x.reshape(5, 2, 1, 1), s).reshape(5, 2), t(x, s))
    torch.testing.assert_close(t(x, 0.7), t(x, s))  # scalar sigma broadcasts


def test_class_conditional_mixture():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    t = GaussianMixtureTeacher(means, stds=0.1, component_labels=[0, 1, 1])
    assert t.label_dim == 2
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 1]), 2).float()
    x = torch.zeros(2, 2)
    out = t(x, torch.full((2,), 0.5), onehot)
    # only component 0 is class 0: a single-Gaussian posterior mean, shrunk toward x = 0
    torch.testing.assert_close(out[0], means[0] * (1 - 0.01 / 0.26), atol=1e-5, rtol=0)
    assert out[1, 0] > 0.5 and out[1, 1] > 0.5  # mixture of the two class-1 modes
    s = t.sample(1000, torch.Generator().manual_seed(0), class_labels=onehot[[0]].expand(1000, 2))
    assert (s[:, 0] < -1).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureTeacher(torch.zeros(3), stds=1.0)
    with pytest.raises(ValueError, match="as covs .* or stds"):
        GaussianMixtureTeacher(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixtureTeacher(torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixtureTeacher(torch.zeros(1, 2), torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureTeacher(torch.zeros(2, 2), stds=1.0, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixtureTeacher(torch.tensor([[float("nan"), 0.0]]), stds=1.0)
    t = eight_gaussians()
    with pytest.raises(ValueError, match="data_shape"):
        t(torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="sigma"):
        t(torch.zeros(4, 2), torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        t(torch.zeros(4, 2), -torch.ones(4))
    with pytest.raises(ValueError, match="unconditional"):
        t(torch.zeros(4, 2), torch.ones(4), torch.zeros(4, 3))
    with pytest.raises(TypeError):
        t(torch.zeros(4, 2, dtype=torch.long), torch.ones(4))
