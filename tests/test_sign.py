"""SIGN (reconstruction) and IGN: gradient routing, terms, engine integration, multi-step
sampling, projection. The fast tests take about 10 s; the 2-D toy training checks (one 1000-step
run, about 80 s of CPU) and the digits check (about 5 min) are marked slow."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fastdistill.engine import ConfigError, DistillConfig, Distiller, method_config
from fastdistill.methods import MethodContext, get_method
from fastdistill.methods.ign import tightness
from fastdistill.losses import dmd_loss
from fastdistill.methods.idempotent import frozen_apply, idem_distance
from fastdistill.methods.base import chain_inputs
from fastdistill.methods.sign import teacher_euler_step
from fastdistill.projection import project
from fastdistill.sampling import multistep_schedule
from fastdistill.student import generate, idempotence_error, sample
from fastdistill.teachers.analytic import eight_gaussians

from ._engine_helpers import TinyDenoiser, tiny_config, tiny_teacher

torch.set_num_threads(1)


def _ctx(net, teacher=None, data=None, ema=None, seed=0):
    return MethodContext(teacher=teacher if teacher is not None else net, net=net, ema=ema if ema is not None else net,
                         data=data, data_generator=torch.Generator().manual_seed(seed), shape=(2,), label_dim=0,
                         device=torch.device("cpu"), seed=seed)


def _toy_data(n, g):
    return torch.randn((n, 2), generator=g) * 0.5, None


def _grads(net):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


# ------------------------------------------------------------------ gradient routing
@pytest.mark.parametrize("distance", ["pseudo_huber", "l1", "l2"])
def test_idempotence_gradient_only_through_inner_application(distance):
    torch.manual_seed(0)
    net = TinyDenoiser(hidden=16)
    cfg = method_config("sign", sign_dist="none", l_idem=1.0, l_rec=0.0, l_flow=0.0, idem_distance=distance,
                       sign_steps=1)
    m = get_method("sign", cfg, backend="reference")
    m.bind(_ctx(net, data=_toy_data))
    noise = m.draw_generator_noise(8, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    loss, nan = m.generator_loss(net, net, net, noise)
    net.zero_grad(set_to_none=True)
    loss.backward()
    got = _grads(net)
    # manual: an explicit frozen deep copy for the outer application
    frozen = copy.deepcopy(net).requires_grad_(False)
    net.zero_grad(set_to_none=True)
    s = cfg.sigma_init
    sig = torch.full((8,), s)
    y = net(noise.z * s, sig)
    ref = idem_distance(frozen(y, sig), y, distance, cfg.idem_c).mean()
    ref.backward()
    want = _grads(net)
    assert torch.allclose(loss, ref, atol=1e-6) and int(nan) == 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # and it differs from the gradient through both applications
    net.zero_grad(set_to_none=True)
    y = net(noise.z * s, sig)
    both = idem_distance(net(y, sig), y, distance, cfg.idem_c).mean()
    both.backward()
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(got, _grads(net)))


def test_frozen_apply_leaves_parameters_alone():
    net = TinyDenoiser()
    x = torch.randn(4, 2, requires_grad=True)
    out = frozen_apply(net, x, 2.5)
    out.sum().backward()
    assert all(p.grad is None for p in net.parameters()) and x.grad is not None
    torch.testing.assert_close(out, net(x, torch.full((4,), 2.5)))


# ------------------------------------------------------------------ multi-step training (sampler states)
def test_chain_inputs_are_the_samplers_inputs():
    net = TinyDenoiser().eval()
    s, levels, B = 2.5, [0.8, 0.2, 0.05], 6
    z = torch.randn(B, 2, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    eps = torch.stack([torch.randn(B, 2, generator=g) for _ in levels], 1)  # the order generate() draws them in
    f = lambda x, lab, j=0: net(x, torch.full((x.shape[0],), s))  # noqa: E731
    pos = torch.tensor([0, 1, 2, 3, 3, 1])
    u = chain_inputs(f, z, None, s, levels, pos, eps)
    assert not u.requires_grad
    for k in range(4):  # the output for position k is the (k+1)-step sampler with the first k levels
        want = generate(net, z, s, steps=k + 1, schedule=levels[:k], generator=torch.Generator().manual_seed(1))
        rows = pos == k
        torch.testing.assert_close(f(u[rows], None), want[rows])
    torch.testing.assert_close(u[pos == 0], z[pos == 0] * s)
    # the recursion evaluates only the samples that go further: the number of rows applied
    seen = []
    chain_inputs(lambda x, lab, j: (seen.append(x.shape[0]), f(x, lab))[1], z, None, s, levels, pos, eps)
    assert seen == [5, 3, 2]


def _chain_method(steps=3, **kw):
    torch.manual_seed(0)
    net, fake, teacher = TinyDenoiser(hidden=16), TinyDenoiser(hidden=16), TinyDenoiser(hidden=16)
    cfg = method_config("sign", sign_dist="dmd", l_idem=0.0, l_rec=0.0, l_flow=0.0, sign_steps=steps,
                       sign_sigma_end=0.1, **kw)
    m = get_method("sign", cfg, backend="reference")
    m.bind(_ctx(net, teacher=teacher, data=_toy_data))
    return m, net, fake, teacher


def test_dist_term_and_fake_step_see_every_sampler_application():
    m, net, fake, teacher = _chain_method(steps=3)
    assert m.chain_levels == multistep_schedule(3, 2.5, "karras", 0.1) and len(m.chain_levels) == 2
    noise = m.draw_generator_noise(32, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    assert noise.chain_eps.shape == (32, 2, 2) and set(noise.chain_pos.tolist()) == {0, 1, 2}
    loss, nan = m.generator_loss(net, teacher, fake, noise)
    net.zero_grad(set_to_none=True)
    loss.backward()
    got = _grads(net)
    # manual: the sampler's input of the chosen application, as a constant; then DMD on f(u)
    f = lambda x, lab, j=0: net(x, torch.full((x.shape[0],), 2.5))  # noqa: E731
    with torch.no_grad():
        u = chain_inputs(f, noise.z, None, 2.5, m.chain_levels, noise.chain_pos, noise.chain_eps)
    net.zero_grad(set_to_none=True)
    x_g = f(u, None)
    x_t = x_g.detach() + noise.sigma[:, None] * noise.eps
    ref = dmd_loss(x_g, teacher(x_t, noise.sigma), fake(x_t, noise.sigma), loss_scale=100.0, backend="reference")
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, b in zip(got, _grads(net)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(u[noise.chain_pos > 0], noise.z[noise.chain_pos > 0] * 2.5)
    # the fake network is fitted to the same mixture of applications
    fn = m.draw_fake_noise(32, (2,), 0, torch.Generator().manual_seed(2), "cpu")
    with torch.no_grad():
        want = f(chain_inputs(f, fn.z, None, 2.5, m.chain_levels, fn.chain_pos, fn.chain_eps), None)
        torch.testing.assert_close(m.fake_samples(net, fn), want)
    # sign_steps=1: the one-step objective (u = sigma_s z) of the original reconstruction
    m1, net1, *_ = _chain_method(steps=1)
    n1 = m1.draw_generator_noise(8, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    assert (n1.chain_pos == 0).all() and n1.chain_eps.shape == (8, 0, 2)
    fn1 = m1.draw_fake_noise(8, (2,), 0, torch.Generator().manual_seed(2), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(m1.fake_samples(net1, fn1), net1(fn1.z * 2.5, torch.full((8,), 2.5)))


def test_sampler_position_decay_favours_the_first_application():
    # decay 1: uniform, the stream of torch.randint; decay r: P(k) ~ r^k
    m, *_ = _chain_method(steps=4)
    pos, _ = m._draw_chain(8, (2,), torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(pos, torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(3)))
    m, *_ = _chain_method(steps=4, sign_pos_decay=0.5)
    pos, eps = m._draw_chain(20000, (2,), torch.Generator().manual_seed(3), "cpu")
    freq = torch.bincount(pos, minlength=4).float() / pos.numel()
    torch.testing.assert_close(freq, torch.tensor([8.0, 4.0, 2.0, 1.0]) / 15, atol=0.01, rtol=0)
    assert eps.shape == (20000, 3, 2)
    with pytest.raises(ConfigError, match="sign_pos_decay"):
        DistillConfig(method=method_config("sign", sign_pos_decay=0.0)).validate()


def test_nan_samples_drop_out_of_the_idempotent_terms():
    torch.manual_seed(0)
    net = TinyDenoiser(hidden=16)
    cfg = method_config("sign", sign_dist="none", l_idem=1.0, l_rec=1.0, l_flow=0.0, sign_steps=1)
    m = get_method("sign", cfg, backend="reference")
    m.bind(_ctx(net, data=_toy_data))
    noise = m.draw_generator_noise(8, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    noise.z[2] = float("nan")  # one generated sample (idem) and another data sample (rec) are NaN
    noise.x_data[5, 0] = float("nan")
    loss, nan = m.generator_loss(net, net, net, noise)
    assert torch.isfinite(loss) and int(nan) == 2
    frozen = copy.deepcopy(net).requires_grad_(False)
    sig = torch.full((8,), 2.5)
    with torch.no_grad():
        y = net(noise.z * 2.5, sig)
        idem = idem_distance(frozen(y, sig), y, "pseudo_huber", cfg.idem_c)
        rec = idem_distance(net(noise.x_data, sig), noise.x_data, "pseudo_huber", cfg.idem_c)
    keep = torch.ones(8, dtype=torch.bool)
    assert torch.isnan(idem[2]) and torch.isnan(rec[5])
    ref = torch.where(keep.index_fill(0, torch.tensor([2]), False), idem, 0).mean() + \
        torch.where(keep.index_fill(0, torch.tensor([5]), False), rec, 0).mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()  # the loop's sanitize_grads cleans what the NaN rows' own forward leaves behind
    assert all(p.grad is not None for p in net.parameters())


def test_student_sample_uses_the_trained_sigma_end(tmp_path):
    d = Distiller(tiny_config(tmp_path, **{"method.name": "sign", "data": "8gaussians", "steps": 1,
                                           "method.sign_sigma_end": 0.4}), teacher=tiny_teacher(0))
    r = d.run()
    net = tiny_teacher(0)
    two = sample(r.checkpoint, 7, seed=3, network=net, steps=2)
    assert torch.equal(two, sample(r.checkpoint, 7, seed=3, network=net, steps=2, sigma_end=0.4))
    assert not torch.equal(two, sample(r.checkpoint, 7, seed=3, network=net, steps=2, sigma_end=0.05))


# ------------------------------------------------------------------ flow term
def test_flow_term_uses_one_teacher_euler_step():
    teacher = eight_gaussians()
    x = teacher.sample(16, generator=torch.Generator().manual_seed(0))
    s_hi, s_lo = torch.full((16,), 1.3), torch.full((16,), 0.9)
    x_hi = x + 1.3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    got = teacher_euler_step(teacher, x_hi, s_hi, s_lo)
    d = teacher(x_hi, s_hi)
    torch.testing.assert_close(got, x_hi + (0.9 - 1.3) * (x_hi - d) / 1.3)
    # an exact ODE step on a single Gaussian is close to Euler for a small step
    # the loss term: d(f(x_hi), sg(f_ema(x_lo))) with adjacent Karras levels
    torch.manual_seed(0)
    net, ema = TinyDenoiser(), TinyDenoiser()
    cfg = method_config("sign", sign_dist="none", l_idem=0.0, l_rec=0.0, l_flow=1.0, flow_levels=18)
    m = get_method("sign", cfg, backend="reference")
    m.bind(_ctx(net, teacher=teacher, ema=ema, data=lambda n, g: (teacher.sample(n, generator=g), None)))
    noise = m.draw_generator_noise(16, (2,), 0, torch.Generator().manual_seed(2), "cpu")
    loss, _ = m.generator_loss(net, teacher, net, noise)
    from fastdistill.sampling import karras_sigmas

    lv = karras_sigmas(18, 0.002, 80.0, 7.0, append_zero=False).float()
    hi, lo = lv[noise.flow_idx], lv[noise.flow_idx + 1]
    assert (noise.flow_idx >= 0).all() and (noise.flow_idx <= 16).all()
    xh = noise.x_data + hi[:, None] * noise.flow_eps
    xl = xh + (lo - hi)[:, None] * (xh - teacher(xh, hi)) / hi[:, None]
    sig = torch.full((16,), 2.5)
    ref = idem_distance(net(xh, sig), ema(xl, sig), "pseudo_huber", cfg.idem_c).mean()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in ema.parameters())


# ------------------------------------------------------------------ IGN
def test_ign_tightness_clamp():
    rec = torch.tensor(0.2)
    raw = torch.tensor([0.0, 1e-4, 0.1, 10.0, 1e6], requires_grad=True)
    t = tightness(raw, rec, a=1.5)
    assert (t.abs() <= 1.5 * 0.2 + 1e-7).all()
    torch.testing.assert_close(t[1], -raw[1], rtol=1e-3, atol=1e-9)  # ~ -raw for small raw
    assert float(t[-1].detach()) == pytest.approx(-0.3, rel=1e-6)  # saturates at -a R
    t.sum().backward()
    assert raw.grad[-1].abs() < 1e-6  # no push once saturated
    r = torch.tensor(0.2, requires_grad=True)
    tightness(raw.detach().requires_grad_(True), r).sum().backward()
    assert r.grad is None or float(r.grad) == 0.0  # R is a stop-gradient scale


def test_ign_routing_matches_manual():
    torch.manual_seed(0)
    net = TinyDenoiser(hidden=16)
    cfg = method_config("ign")
    m = get_method("ign", cfg, backend="reference")
    m.bind(_ctx(net, data=_toy_data))
    noise = m.draw_generator_noise(8, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    loss, _ = m.generator_loss(net, None, None, noise)
    net.zero_grad(set_to_none=True)
    loss.backward()
    got = _grads(net)
    frozen = copy.deepcopy(net).requires_grad_(False)
    net.zero_grad(set_to_none=True)
    sig = torch.full((8,), 2.5)
    z = noise.z * 2.5
    l1 = lambda a, b: (a - b).abs().mean(1)  # noqa: E731
    rec = l1(net(noise.x_data, sig), noise.x_data)
    fz = net(z, sig)
    idem = l1(frozen(fz, sig), fz)
    fzf = frozen(z, sig)
    raw = l1(net(fzf, sig), fzf)
    R = 1.5 * rec.mean().detach()
    ref = (20 * rec + 20 * idem + 2.5 * (-torch.tanh(raw / R) * R)).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, b in zip(got, _grads(net)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ign_nan_samples_drop_out():
    torch.manual_seed(0)
    net = TinyDenoiser(hidden=16)
    m = get_method("ign", method_config("ign"), backend="reference")
    m.bind(_ctx(net, data=_toy_data))
    noise = m.draw_generator_noise(8, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    clean, _ = m.generator_loss(net, None, None, noise)
    rows = torch.tensor([0, 1, 3, 4, 5, 6, 7])
    sub = copy.copy(noise)
    sub.z, sub.x_data = noise.z[rows], noise.x_data[rows]
    want, _ = m.generator_loss(net, None, None, sub)
    noise.z[2] = float("nan")
    loss, nan = m.generator_loss(net, None, None, noise)
    assert int(nan) == 1 and torch.isfinite(loss) and not torch.isclose(loss, clean)
    torch.testing.assert_close(loss, want * 7 / 8)  # the other samples' loss, the NaN one contributing zero


# ------------------------------------------------------------------ engine integration
def test_engine_runs_sign_and_ign_and_skips_fake_for_ign(tmp_path):
    d = Distiller(tiny_config(tmp_path / "s", **{"method.name": "sign", "method.bank_size": 32, "method.bank_steps": 4,
                                                 "method.l_reg": 1.0, "steps": 3}), teacher=tiny_teacher(0))
    assert d.method.bank["y"].shape == (32, 2)  # no data: a bank of teacher samples
    r = d.run()
    assert r.step == 3 and r.nan_steps == 0
    rows = [h for h in d.history if "sign_idem" in h]
    assert rows and {"sign_dist", "sign_rec", "sign_flow", "sign_reg"} <= set(rows[-1])
    d = Distiller(tiny_config(tmp_path / "i", **{"method.name": "ign", "data": "8gaussians", "steps": 3}),
                  teacher=tiny_teacher(0))
    fake_before = [p.detach().clone() for p in d.fake.parameters()]
    d.run()
    assert all(torch.equal(a, b) for a, b in zip(fake_before, d.fake.parameters()))
    assert d.history[-1]["loss_fake"] == 0.0


def test_ign_needs_data_and_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="needs real data"):
        tiny_config(tmp_path, **{"method.name": "ign"}).validate()
    for bad, msg in [("method.sign_dist=foo", "sign_dist"), ("method.l_idem=-1", "l_idem"),
                     ("method.idem_distance=l3", "idem_distance"), ("method.flow_levels=1", "flow_levels")]:
        with pytest.raises(ConfigError, match=msg):
            DistillConfig().with_overrides([bad]).validate()


def test_sign_resume_is_exact(tmp_path):
    over = {"method.name": "sign", "data": "8gaussians", "steps": 4, "ckpt_every": 2}
    a = Distiller(tiny_config(tmp_path / "a", **over), teacher=tiny_teacher(0))
    a.run()
    b = Distiller(tiny_config(tmp_path / "b", **{**over, "steps": 2}), teacher=tiny_teacher(0))
    b.run()
    c = Distiller(tiny_config(tmp_path / "b", **{**over, "resume": "auto"}), teacher=tiny_teacher(0))
    c.run()
    for p, q in zip(a.G.parameters(), c.G.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ multi-step sampling
def test_multistep_schedule_and_generate():
    assert multistep_schedule(1) == [] and multistep_schedule(3, schedule="reapply") == [0.0, 0.0]
    lv = multistep_schedule(4)
    assert len(lv) == 3 and all(a > b for a, b in zip(lv, lv[1:])) and lv[0] < 2.5
    assert multistep_schedule(2, schedule=[0.3]) == [0.3]
    with pytest.raises(ValueError):
        multistep_schedule(3, schedule=[0.3])
    with pytest.raises(ValueError):
        multistep_schedule(0)
    with pytest.raises(ValueError):
        multistep_schedule(2, schedule="cosine")
    net = TinyDenoiser().eval()
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    x1 = generate(net, z, 2.5)
    torch.testing.assert_close(x1, net(z * 2.5, torch.full((5,), 2.5)))
    for steps in (2, 4):
        a = generate(net, z, 2.5, steps=steps, generator=torch.Generator().manual_seed(1))
        b = generate(net, z, 2.5, steps=steps, generator=torch.Generator().manual_seed(1))
        assert a.shape == (5, 2) and torch.equal(a, b)
    r = generate(net, z, 2.5, steps=3, schedule="reapply")
    torch.testing.assert_close(r, net(net(x1, torch.full((5,), 2.5)), torch.full((5,), 2.5)))
    sig = torch.full((5,), 2.5)
    with torch.no_grad():
        want = float((net(net(x1, sig), sig) - net(x1, sig)).abs().mean())
    assert want > 0 and idempotence_error(net, x1, 2.5) == pytest.approx(want, rel=1e-6)


def test_student_sample_steps(tmp_path):
    d = Distiller(tiny_config(tmp_path, **{"method.name": "sign", "data": "8gaussians", "steps": 1}),
                  teacher=tiny_teacher(0))
    r = d.run()
    net = tiny_teacher(0)
    one = sample(r.checkpoint, 7, seed=3, network=net)
    assert torch.equal(one, sample(r.checkpoint, 7, seed=3, network=net, steps=1))
    four = sample(r.checkpoint, 7, seed=3, network=net, steps=4)
    assert four.shape == (7, 2) and torch.equal(four, sample(r.checkpoint, 7, seed=3, network=net, steps=4))
    assert not torch.equal(one, four)


# ------------------------------------------------------------------ projection
class TinyImageNet(torch.nn.Module):
    img_channels, img_resolution, label_dim, sigma_data = 1, 8, 0, 0.5

    def forward(self, x, sigma, labels=None):
        return 0.5 * x


def test_projection_input_errors(tmp_path):
    net = TinyImageNet()
    ok = torch.zeros(3, 1, 8, 8)
    assert project(net, ok, sigma=0.0).shape == (3, 1, 8, 8)
    assert project(net, np.zeros((8, 8), np.uint8)).shape == (1, 8, 8)  # single (H, W) uint8 image
    assert project(net, np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 1, 8, 8)  # channels-last
    with pytest.raises(ValueError, match="channels"):
        project(net, torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="resolution"):
        project(net, torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        project(net, torch.full((1, 1, 8, 8), 3.0))
    with pytest.raises(ValueError, match="NaN"):
        project(net, torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="image input"):
        project(net, torch.zeros(1, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="sigma"):
        project(net, ok, sigma=-1.0)
    with pytest.raises(ValueError, match="unconditional"):
        project(net, ok, cond=1)
    with pytest.raises(ValueError, match="vectors"):
        project(TinyDenoiser(), torch.zeros(3, 5))
    with pytest.raises(FileNotFoundError):
        project(net, tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unsupported"):
        project(net, tmp_path / "x.txt")
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert project(net, tmp_path / "x.npy").shape == (2, 1, 8, 8)
    from PIL import Image

    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "x.png")
    torch.testing.assert_close(project(net, tmp_path / "x.png"), torch.full((1, 8, 8), 0.5))
    a = project(net, ok, sigma=0.3, steps=2, seed=1)
    assert torch.equal(a, project(net, ok, sigma=0.3, steps=2, seed=1))


def test_project_cli_hook(tmp_path, capsys):
    import argparse

    from fastdistill.cli.parsers import add_project_parser

    parser = argparse.ArgumentParser()
    add_project_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["project", str(tmp_path / "nope"), "--input", "x.npy", "--sigma", "0.5",
                              "--out", str(tmp_path / "o.png")])
    assert args.func(args) == 2 and "fastdistill project" in capsys.readouterr().err


# ------------------------------------------------------------------ the 2-D toy
@pytest.fixture(scope="module")
def toy_sign(tmp_path_factory):
    from fastdistill.engine import preset_config

    cfg = preset_config("toy-sign").with_overrides([
        "steps=1000", f"out_dir={tmp_path_factory.mktemp('toysign')}", "resume=none", "progress=false",
        "eval_every=0", "ckpt_every=0", "eval_samples=2048"])
    d = Distiller(cfg)
    data = d.teacher.sample(2048, generator=torch.Generator().manual_seed(1)).float()
    before = idempotence_error(d.G, data, 2.5)
    res = d.run()
    return d, res, data, before


@pytest.mark.slow
def test_toy_sign_quality_and_idempotence(toy_sign):
    from fastdistill.metrics import sliced_wasserstein

    d, res, data, before = toy_sign
    q = res.quality
    assert q.student < 0.5 * q.initial
    assert q.student < 2.5 * q.teacher_heun35  # approaches the 35-evaluation teacher
    after = idempotence_error(d.ema.module, data, 2.5)
    assert after < 0.5 * before
    z = torch.randn((2048, 2), generator=torch.Generator().manual_seed(2))
    x2 = generate(d.ema.module, z, 2.5, steps=2, generator=torch.Generator().manual_seed(3))
    assert float(sliced_wasserstein(x2, data, seed=1)) < 3 * q.teacher_heun35


@pytest.mark.slow
def test_toy_projection_brings_points_closer(toy_sign):
    from fastdistill.metrics import sliced_wasserstein

    d, _, data, _ = toy_sign
    bad = data + 0.3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(5))
    out = project(d.ema.module, bad, sigma=0.0)
    assert float(sliced_wasserstein(out, data, seed=1)) < 0.7 * float(sliced_wasserstein(bad, data, seed=1))
    # mean distance to the nearest data point also falls
    ref = data[:1024]
    near = lambda x: torch.cdist(x, ref).min(1).values.mean()  # noqa: E731
    assert near(out) < near(bad)


# ------------------------------------------------------------------ digits (slow; needs the shipped teacher)
@pytest.mark.slow
def test_digits_sign_projection(tmp_path):
    from fastdistill.teachers.digits import digits_teacher_path

    assert digits_teacher_path().is_file()  # shipped with the package
    from fastdistill.data import load_dataset
    from fastdistill.engine import preset_config

    cfg = preset_config("digits-sign").with_overrides([
        "steps=300", f"out_dir={tmp_path}", "resume=none", "progress=false", "sample_every=0", "ckpt_every=0"])
    d = Distiller(cfg)
    ds = load_dataset("digits")
    x, lab = ds.sample(256, torch.Generator().manual_seed(0))
    labels = lab.argmax(1)
    idem_start = idempotence_error(d.ema.module, x, 2.5, lab)
    d.run()
    g = torch.Generator().manual_seed(1)
    noisy = (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    masked = x.clone()
    masked[:, :, 4:, :] = -1.0
    shifted = torch.roll(x, shifts=1, dims=3)
    net = d.ema.module
    for name, bad in (("noisy", noisy), ("masked", masked), ("shifted", shifted)):
        out = project(net, bad, sigma=0.3, cond=labels, seed=0)
        e_in = (bad - x).square().mean()
        e_out = (out - x).square().mean()
        print(name, float(e_in), float(e_out))
        if name == "noisy":
            assert e_out < e_in
    # the idempotent terms are strong enough to lower the idempotence error on real digits
    assert idempotence_error(net, x, 2.5, lab) < 0.9 * idem_start
    # trained on every application of the 4-step sampler: 4 steps beat 1 step (FID, digits features)
    from fastdistill.metrics import quality, reference_data
    from fastdistill.student import generate

    ref = reference_data("digits")
    z = torch.randn((898, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    lab = torch.nn.functional.one_hot(torch.arange(898) % 10, 10).float()
    fid = {k: quality(generate(net, z, 2.5, lab, steps=k, generator=torch.Generator().manual_seed(1)), ref,
                      full=False)["fid"] for k in (1, 4)}
    assert fid[4] < fid[1] - 0.05, fid
