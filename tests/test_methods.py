"""One SiD / SIM / DMD generator step and one fake-score step against hand-written reference steps.

The reference side is written from docs/algorithms.md sections 1-4 with fastdistill.ops.reference
formulas and plain autograd; both sides see the same seeds.
"""
import copy

import pytest
import torch

from fastdistill.engine import method_config
from fastdistill.methods import available_methods, get_method, karras_sigma
from fastdistill.ops import reference as ref

from tests._engine_helpers import tiny_teacher

B, DIM = 12, 3


def perturbed(net, scale, seed):
    out = copy.deepcopy(net).requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


@pytest.fixture
def nets():
    teacher = tiny_teacher(0, dim=DIM).requires_grad_(False).eval()
    G = perturbed(teacher, 0.05, 1)
    fake = perturbed(teacher, 0.1, 2)
    return teacher, G, fake


def handwritten_generator_noise(seed, n, shape, t_max=800.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *shape), generator=g)
    u = torch.rand((n,), generator=g) * (t_max / 1000)
    smin, smax, rho = 0.002, 80.0, 7.0
    sigma = (smax ** (1 / rho) + (1 - u) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    eps = torch.randn((n, *shape), generator=g)
    return z, sigma, eps


def handwritten_fake_noise(seed, n, shape):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *shape), generator=g)
    sigma = (torch.randn((n,), generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn((n, *shape), generator=g)
    return z, sigma, noise


def test_registry_and_defaults():
    assert {"sid", "sim", "dmd"} <= set(available_methods())
    m = get_method("sid")
    c = m.cfg
    assert (c.alpha, c.sigma_init, c.t_max, c.generator_loss_scale, c.fake_loss_scale) == (1.2, 2.5, 800.0, 100.0, 1.0)
    assert (c.fake_p_mean, c.fake_p_std) == (-1.2, 1.2)
    with pytest.raises(ValueError, match="available"):
        get_method("nope")


def test_noise_schedules_match_formulas():
    m = get_method("sid")
    noise = m.draw_generator_noise(B, (DIM,), 0, torch.Generator().manual_seed(5), "cpu")
    z, sigma, eps = handwritten_generator_noise(5, B, (DIM,))
    torch.testing.assert_close(noise.z, z, rtol=0, atol=0)
    torch.testing.assert_close(noise.sigma, sigma)
    torch.testing.assert_close(noise.eps, eps, rtol=0, atol=0)
    big = m.draw_generator_noise(20000, (1,), 0, torch.Generator().manual_seed(0), "cpu").sigma
    assert big.min() >= 0.002 - 1e-6 and big.max() <= 24.5 and big.max() > 20
    assert karras_sigma(torch.tensor(0.0), 0.002, 80, 7).item() == pytest.approx(0.002)
    f = m.draw_fake_noise(B, (DIM,), 0, torch.Generator().manual_seed(6), "cpu")
    z, sigma, nz = handwritten_fake_noise(6, B, (DIM,))
    torch.testing.assert_close(f.sigma, sigma)
    torch.testing.assert_close(f.noise, nz, rtol=0, atol=0)


def reference_generator_loss(name, G, teacher, fake, z, sigma, eps):
    """Hand-written generator step from docs/algorithms.md (reference.py formulas)."""
    s = torch.full((B,), 2.5)
    x_g = G(2.5 * z, s)
    x_t = x_g + sigma[:, None] * eps
    if name == "dmd":
        with torch.no_grad():
            yr, yf = teacher(x_t, sigma), fake(x_t, sigma)
        per = ref.dmd(x_g, yr, yf, None, scale=1.0)
    else:
        yr, yf = teacher(x_t, sigma), fake(x_t, sigma)
        if name == "sid":
            per = ref.sid(x_g, yr, yf, None, alpha=1.2, scale=1.0)
        else:
            per = ref.sim(x_g, yr, yf, torch.ones(B), c=1e-3, pseudo_huber=True, scale=1.0)
    return 100.0 * per.mean()


@pytest.mark.parametrize("name", ["sid", "sim", "dmd"])
def test_generator_step_matches_reference(nets, name):
    teacher, G, fake = nets
    fake.requires_grad_(False)
    method = get_method(name, method_config(name, backend="auto"))
    method.sigma_data = 0.5
    noise = method.draw_generator_noise(B, (DIM,), 0, torch.Generator().manual_seed(11), "cpu")
    loss, _ = method.generator_loss(G, teacher, fake, noise)
    loss.backward()

    G2 = copy.deepcopy(G)
    for p in G2.parameters():
        p.grad = None
    z, sigma, eps = handwritten_generator_noise(11, B, (DIM,))
    loss_ref = reference_generator_loss(name, G2, teacher, fake, z, sigma, eps)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for p, q in zip(G.parameters(), G2.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in fake.parameters())


def test_sid_gradient_flows_through_scores(nets):
    """Detaching the score outputs changes the SiD gradient (docs/algorithms.md section 1)."""
    teacher, G, fake = nets
    fake.requires_grad_(False)
    m = get_method("sid", method_config("sid", backend="reference"))
    noise = m.draw_generator_noise(B, (DIM,), 0, torch.Generator().manual_seed(3), "cpu")
    loss, _ = m.generator_loss(G, teacher, fake, noise)
    g_full = torch.autograd.grad(loss, list(G.parameters()))
    x_g = m.generate(G, noise.z)
    x_t = x_g + noise.sigma[:, None] * noise.eps
    yr, yf = teacher(x_t, noise.sigma).detach(), fake(x_t, noise.sigma).detach()
    from fastdistill.losses import sid_loss

    g_det = torch.autograd.grad(sid_loss(x_g, yr, yf, loss_scale=100.0), list(G.parameters()))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(g_full, g_det))


def test_fake_step_matches_reference(nets):
    teacher, G, fake = nets
    G.requires_grad_(False)
    m = get_method("sid", method_config("sid", backend="auto"))
    m.sigma_data = 0.5
    noise = m.draw_fake_noise(B, (DIM,), 0, torch.Generator().manual_seed(12), "cpu")
    loss, _ = m.fake_loss(G, fake, noise)
    loss.backward()

    fake2 = copy.deepcopy(fake)
    for p in fake2.parameters():
        p.grad = None
    z, sigma, nz = handwritten_fake_noise(12, B, (DIM,))
    with torch.no_grad():
        x_g = G(2.5 * z, torch.full((B,), 2.5))
    pred = fake2(x_g + sigma[:, None] * nz, sigma)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    loss_ref = (lam * ((pred - x_g) ** 2).sum(1)).mean()
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for p, q in zip(fake.parameters(), fake2.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in G.parameters())


def test_dmd_direction(nets):
    """DMD's gradient w.r.t. x_g is loss_scale/B * (yf - yr)/w (docs/algorithms.md section 4)."""
    teacher, G, fake = nets
    m = get_method("dmd", method_config("dmd", backend="reference", divisor="none", generator_loss_scale=1.0))
    noise = m.draw_generator_noise(B, (DIM,), 0, torch.Generator().manual_seed(4), "cpu")
    x_g = m.generate(G, noise.z).detach().requires_grad_(True)

    class Const(torch.nn.Module):
        def forward(self, x, s, c=None):
            return x_g

    loss, _ = m.generator_loss(Const(), teacher, fake, noise)
    (gx,) = torch.autograd.grad(loss, x_g)
    x_t = x_g.detach() + noise.sigma[:, None] * noise.eps
    want = (fake(x_t, noise.sigma) - teacher(x_t, noise.sigma)).detach() / B
    torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-7)
