"""EDM Heun/Euler samplers: schedule, NFE count, proof on an analytic teacher, NVIDIA vectors."""
from pathlib import Path

import pytest
import torch

from fastdistill.metrics import mmd_rbf, sliced_wasserstein
from fastdistill.sampling import edm_sampler, euler_sampler, heun_sampler, karras_sigmas, sample
from fastdistill.teachers.analytic import GaussianMixtureTeacher, eight_gaussians, single_gaussian

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "testvectors"


def test_karras_sigmas():
    s = karras_sigmas(18)
    assert s.shape == (19,) and s.dtype == torch.float64
    assert float(s[0]) == pytest.approx(80.0) and float(s[17]) == pytest.approx(0.002) and s[18] == 0
    assert (s[1:] < s[:-1]).all()
    i = 5
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(s[i]) == pytest.approx(ref, rel=1e-12)
    assert karras_sigmas(4, append_zero=False).shape == (4,)
    assert float(karras_sigmas(1)[0]) == 80.0
    with pytest.raises(ValueError):
        karras_sigmas(0)
    with pytest.raises(ValueError):
        karras_sigmas(5, sigma_min=1.0, sigma_max=0.5)


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.seen = inner, 0, []
        self.sigma_data, self.img_channels, self.img_resolution, self.label_dim = 0.5, 2, 1, inner.label_dim
        self.data_shape = inner.data_shape

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        self.seen.append((x.dtype, sigma.dtype, tuple(sigma.shape)))
        return self.inner(x, sigma, class_labels)


def test_nfe_dtypes_and_determinism():
    net = Counting(eight_gaussians())
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    out = heun_sampler(net, z)
    assert net.calls == 35 and out.dtype == torch.float64 and out.shape == (7, 2)
    assert all(s == (torch.float32, torch.float32, (7,)) for s in net.seen)
    net.calls = 0
    euler_sampler(net, z, num_steps=10)
    assert net.calls == 10
    net.calls = 0
    heun_sampler(net, z, num_steps=1)  # a single step is a plain Euler step to 0
    assert net.calls == 1
    a = sample(net, 50, seed=3, num_steps=6)
    b = sample(net, 50, generator=torch.Generator().manual_seed(3), num_steps=6, batch_size=16)
    assert torch.equal(a, b) and a.dtype == torch.float32


def test_gaussian_heun_is_second_order():
    """Single Gaussian: the exact flow is x(s) = mu + sqrt(v+s^2)/sqrt(v+smax^2) (x(smax)-mu)."""
    t = single_gaussian([0.5, -0.5], 0.3**2)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    x_end = t.means[0] + (0.3 ** 2 + 0.002 ** 2) ** 0.5 / (0.3 ** 2 + 80.0 ** 2) ** 0.5 * (80 * z.double() - t.means[0])
    errs = {}
    for solver in ("heun", "euler"):
        for n in (20, 40):
            # the last step goes 0.002 -> 0; compare the state at sigma = 0.002 (trajectory[-2])
            _, traj = edm_sampler(t, z, num_steps=n, solver=solver, net_dtype=torch.float64, return_trajectory=True)
            errs[solver, n] = float((traj[-2] - x_end).abs().max())
    assert errs["heun", 40] < errs["heun", 20] / 3  # second order (~1/4); Euler only halves
    assert errs["euler", 40] > errs["euler", 20] / 2.5
    assert errs["heun", 40] < errs["euler", 40] / 5


def test_heun_on_gaussian_mixture_reaches_the_data():
    """Proof: 18-step Heun on the exact 8-Gaussian teacher ~ the data-vs-data baseline."""
    t = eight_gaussians()
    g = torch.Generator().manual_seed(1)
    data, data2 = t.sample(3000, g), t.sample(3000, g)
    gen = sample(t, 3000, seed=7)
    swd_base, swd = sliced_wasserstein(data2, data), sliced_wasserstein(gen, data)
    mmd_base, mmd = mmd_rbf(data2, data), mmd_rbf(gen, data)
    assert swd < 1.5 * swd_base + 0.01, (float(swd), float(swd_base))
    assert abs(float(mmd)) < 5e-4 and abs(float(mmd_base)) < 5e-4, (float(mmd), float(mmd_base))
    # every sample sits on the ring (no mass between modes)
    r = gen.norm(dim=1)
    assert ((r - 1).abs() < 0.3).float().mean() > 0.995
    # a coarse sampler is measurably worse: the metric can tell
    bad = sample(t, 3000, seed=7, num_steps=3)
    assert sliced_wasserstein(bad, data) > 3 * swd_base


def test_class_conditional_sampling():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]])
    t = GaussianMixtureTeacher(means, stds=0.1, component_labels=[0, 1, 2])
    x, labels = sample(t, 300, seed=0, return_labels=True, num_steps=12)
    assert labels.shape == (300, 3)
    nearest = torch.cdist(x, means).argmin(1)
    assert torch.equal(nearest, labels.argmax(1))
    x1 = sample(t, 20, seed=0, class_labels=2, num_steps=12)
    assert torch.cdist(x1, means).argmin(1).eq(2).all()
    with pytest.raises(ValueError, match="class indices"):
        sample(t, 5, class_labels=torch.tensor([0, 1, 5, 0, 0]))
    with pytest.raises(ValueError, match="unconditional"):
        sample(eight_gaussians(), 5, class_labels=0)


def test_stochastic_churn_is_seeded():
    t = eight_gaussians()
    z = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    a = edm_sampler(t, z, S_churn=10, generator=torch.Generator().manual_seed(1))
    b = edm_sampler(t, z, S_churn=10, generator=torch.Generator().manual_seed(1))
    c = edm_sampler(t, z)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_arguments():
    t = eight_gaussians()
    with pytest.raises(ValueError, match="solver"):
        edm_sampler(t, torch.randn(3, 2), solver="rk4")
    with pytest.raises(ValueError, match="latents"):
        edm_sampler(t, torch.randn(3))
    with pytest.raises(TypeError):
        edm_sampler(t, torch.zeros(3, 2, dtype=torch.long))


@pytest.fixture(scope="module")
def nvidia_vectors():
    if not VECTORS.is_dir():
        pytest.skip(f"shared test vectors not found at {VECTORS} (a user's checkout has no ../shared)")
    from safetensors.torch import load_file

    from fastdistill.teachers import load_teacher

    net = load_teacher(str(VECTORS / "edm_ddpmpp_tiny.safetensors")).eval()
    return net, load_file(str(VECTORS / "edm_sampler_ddpmpp_tiny.safetensors"))


@pytest.mark.parametrize("steps", [18, 5])
def test_matches_nvidia_edm_sampler(nvidia_vectors, steps):
    net, v = nvidia_vectors
    out = heun_sampler(net, v["input.latents"], v["input.class_labels"], num_steps=steps).float()
    torch.testing.assert_close(out, v[f"output.heun{steps}"], atol=1e-4, rtol=1e-4)


def test_onestep_vector(nvidia_vectors):
    net, v = nvidia_vectors
    z = v["input.latents"]
    with torch.no_grad():
        out = net(2.5 * z, torch.full((z.shape[0],), 2.5), v["input.class_labels"])
    torch.testing.assert_close(out, v["output.onestep_sigma2.5"], atol=1e-5, rtol=1e-5)
