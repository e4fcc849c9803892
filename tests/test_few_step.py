"""Few-step SiD / SIM / DMD generators (``method.steps`` K > 1, docs/algorithms.md section 10):
the levels, one training step against a hand-written per-sample reference, and the user's path
(train, checkpoint, sample, eval, export) for pixel and pipeline teachers."""
import json

import numpy as np
import pytest
import torch

from fastdistill import load_student
from fastdistill.cli import main
from fastdistill.engine import Distiller
from fastdistill.methods import ConfigError, get_method, method_config
from fastdistill.methods.base import MethodContext
from fastdistill.methods.levels import TeacherLevels, few_step_timesteps
from fastdistill.teachers.schedule import DiscreteSchedule, FlowSchedule
from fastdistill.ops import reference as ref
from fastdistill.sampling import multistep_schedule
from fastdistill.teachers import GaussianMixtureTeacher
from tests._engine_helpers import TinyDenoiser, tiny_config, tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- the levels
def test_levels_edm_teacher_and_flow():
    assert few_step_timesteps(999, 4) == [999, 749, 499, 249]  # DMD2's SDXL list
    assert few_step_timesteps(999, 1) == [999] and few_step_timesteps(624, 2) == [624, 311]
    edm = get_method("dmd", method_config("dmd", steps=4))
    assert edm.step_sigmas == [2.5] + multistep_schedule(4, 2.5, "karras", 0.05)
    assert edm.step_sigmas == sorted(edm.step_sigmas, reverse=True) and edm.steps == 4
    sig = torch.linspace(0.01, 14.6, 1000)
    vp_cfg = method_config("sid", steps=4, t_init=999, noise_levels="teacher")
    vp = get_method("sid", vp_cfg, levels=TeacherLevels(vp_cfg, DiscreteSchedule(sig)))
    assert vp.step_sigmas == [float(sig[t]) for t in (999, 749, 499, 249)]
    flow_cfg = method_config("sim", steps=2, t_init=999)
    flow = get_method("sim", flow_cfg, levels=TeacherLevels(flow_cfg, FlowSchedule(1000)))
    assert flow.step_sigmas == pytest.approx([0.999 / 0.001, 0.499 / 0.501], rel=1e-5)
    assert get_method("sid").step_sigmas == [2.5] and not get_method("sid").needs  # one step: no chain, no context
    assert get_method("sid", method_config("sid", steps=2)).needs == {"net"}


def test_bad_levels_are_refused():
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="method.steps must be an integer >= 1"):
            method_config("dmd", steps=bad).validate()
    with pytest.raises(ConfigError, match="step_sigma_end .* must be below method.sigma_init"):
        method_config("dmd", steps=2, step_sigma_end=3.0).validate()
    with pytest.raises(ConfigError, match="does not fit below method.t_init=5"):
        bad = method_config("dmd", steps=4, t_init=5)
        get_method("dmd", bad, levels=TeacherLevels(bad, DiscreteSchedule(torch.linspace(0.01, 14.6, 1000))))


# ---------------------------------------------------------------------- one step, by hand
def _by_hand_inputs(net, z, pos, eps, levels):
    """Each sample's generator input, one sample at a time: its chain run from ``levels[0] z``."""
    rows = []
    with torch.no_grad():
        for b in range(z.shape[0]):
            x = levels[0] * z[b:b + 1]
            for j in range(int(pos[b])):
                x = net(x, torch.full((1,), levels[j])) + levels[j + 1] * eps[b:b + 1, j]
            rows.append(x)
    return torch.cat(rows), torch.tensor(levels)[pos]


@pytest.mark.parametrize("name", ["sid", "sim", "dmd"])
@pytest.mark.parametrize("bound", [False, True])
def test_generator_and_fake_steps_match_a_per_sample_reference(name, bound):
    """Backward simulation: each sample is the application at its drawn position of the current
    generator's chain (no gradient through the chain), then the one-step method's loss; the fake
    network is fitted to the same applications."""
    torch.manual_seed(0)
    net, fake, teacher = TinyDenoiser(hidden=16), TinyDenoiser(hidden=16), TinyDenoiser(hidden=16)
    for p in (*fake.parameters(), *teacher.parameters()):
        p.requires_grad_(False)
    m = get_method(name, method_config(name, steps=3), backend="reference")
    if bound:  # the loop's context: the chain runs on the raw module
        m.bind(MethodContext(teacher=teacher, net=net, ema=net, data=None, data_generator=None, shape=(2,),
                             label_dim=0, device=torch.device("cpu")))
    levels = m.step_sigmas
    noise = m.draw_generator_noise(24, (2,), 0, torch.Generator().manual_seed(1), "cpu")
    assert noise.chain_eps.shape == (24, 2, 2) and set(noise.chain_pos.tolist()) == {0, 1, 2}
    loss, nan = m.generator_loss(net, teacher, fake, noise)
    got = torch.autograd.grad(loss, list(net.parameters()))

    x_in, s_in = _by_hand_inputs(net, noise.z, noise.chain_pos, noise.chain_eps, levels)
    x_g = net(x_in, s_in)
    x_t = x_g + noise.sigma[:, None] * noise.eps
    if name == "dmd":
        x_t = x_t.detach()
    y_real, y_fake = teacher(x_t, noise.sigma), fake(x_t, noise.sigma)
    want = {"sid": lambda: ref.sid(x_g, y_real, y_fake, None, 1.2, 1.0),
            "sim": lambda: ref.sim(x_g, y_real, y_fake, torch.ones(24), 1e-3, True, 1.0),
            "dmd": lambda: ref.dmd(x_g, y_real, y_fake, None, 1.0)}[name]().mean() * 100.0
    torch.testing.assert_close(loss, want)
    for a, b in zip(got, torch.autograd.grad(want, list(net.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert int(nan) == 0
    assert not torch.allclose(x_in[noise.chain_pos > 0], levels[0] * noise.z[noise.chain_pos > 0])

    fn = m.draw_fake_noise(24, (2,), 0, torch.Generator().manual_seed(2), "cpu")
    with torch.no_grad():
        x_in, s_in = _by_hand_inputs(net, fn.z, fn.chain_pos, fn.chain_eps, levels)
        torch.testing.assert_close(m.fake_samples(net, fn), net(x_in, s_in), atol=1e-6, rtol=1e-5)


def test_one_step_generators_draw_nothing_more():
    """steps=1 keeps the one-step random stream (the shared test vectors and old runs' resume rely on it)."""
    m = get_method("sid")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    n = m.draw_generator_noise(8, (2,), 0, g1, "cpu")
    assert n.chain_pos is None and n.chain_eps is None
    z, u = torch.randn((8, 2), generator=g2), torch.rand((8,), generator=g2)
    eps = torch.randn((8, 2), generator=g2)
    assert torch.equal(n.z, z) and torch.equal(n.eps, eps) and torch.equal(g1.get_state(), g2.get_state())
    del u


# ---------------------------------------------------------------------- the user's path (pixel)
@pytest.fixture(scope="module")
def few_step_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("few-step")
    over = {"method.name": "dmd", "method.steps": 3, "ckpt_every": 3, "teacher.init": "fit", "teacher.fit_steps": 5,
            "teacher.mlp_hidden": 16}
    d = Distiller(tiny_config(out, steps=3, **over), teacher=GaussianMixtureTeacher([[1.0, 0.0], [-1.0, 0.0]], stds=0.1))
    d.run()
    return out, d


def test_checkpoint_sample_and_eval_use_the_trained_steps(few_step_run, tmp_path):
    out, d = few_step_run
    s = load_student(out)
    assert s.info.steps == 3 and s.info.step_sigmas == tuple(d.method.step_sigmas) and s.info.method == "dmd"
    x = s.sample(64, seed=4)  # default: all three steps, the draw the trainer's evaluation uses
    torch.testing.assert_close(x, d.student_samples(64, seed=4), atol=1e-6, rtol=1e-5)
    first = s.sample(64, seed=4, steps=1)  # the first application alone: D(sigma_1 z; sigma_1)
    want = s.net(s.info.step_sigmas[0] * torch.randn((64, 2), generator=torch.Generator().manual_seed(4)),
                 torch.full((64,), s.info.step_sigmas[0]))
    torch.testing.assert_close(first, want)
    assert (first - x).abs().max() > 1e-3
    with pytest.raises(ValueError, match="3-step generator .*at most 3 steps"):
        s.sample(4, steps=4)
    assert main(["sample", str(out), "-n", "8", "--out", str(tmp_path / "s")]) == 0
    torch.testing.assert_close(torch.as_tensor(np.load(tmp_path / "s.npz")["samples"]), s.sample(8, seed=0))
    assert main(["sample", str(out), "-n", "8", "--steps", "5", "--out", str(tmp_path / "t")]) == 2


def test_few_step_run_resumes_exactly(tmp_path):
    over = {"method.name": "sid", "method.steps": 2, "ckpt_every": 2}
    whole = Distiller(tiny_config(tmp_path / "whole", steps=4, **over), teacher=tiny_teacher(0))
    whole.run()
    Distiller(tiny_config(tmp_path / "part", steps=2, **over), teacher=tiny_teacher(0)).run()
    again = Distiller(tiny_config(tmp_path / "part", steps=4, **{**over, "resume": "auto"}), teacher=tiny_teacher(0))
    again.run()
    for a, b in zip(whole.G.parameters(), again.G.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- the user's path (pipelines)
@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_pipeline_few_step_distill_export_and_load_back(tmp_path, kind):
    """A 2-step DMD2-style student of a Stable Diffusion (discrete) and an SD3 (flow) pipeline at
    DMD2's timesteps; its export records the timesteps and loads back as the same 2-step student."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tests.tiny_pipelines import make_sd3_pipeline, make_sd_pipeline, write_prompt_file

    folder = (make_sd_pipeline if kind == "sd" else make_sd3_pipeline)(tmp_path / "pipe")
    prompts = write_prompt_file(tmp_path / "prompts.txt")
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(folder), "--prompts", str(prompts), "batch_size=2", "steps=2",
                 f"out_dir={run}", "progress=false", "ckpt_every=2", "sample_every=0", "teacher.dtype=fp32",
                 "method.name=dmd", "method.steps=2", "method.t_init=999"]) == 0
    student = load_student(run)
    assert student.info.steps == 2 and student.info.step_sigmas[0] == student.info.sigma_init
    exported = tmp_path / "exported"
    assert main(["export", str(run), str(exported)]) == 0
    info = json.loads((exported / "fastdistill_student.json").read_text())
    if kind == "sd":
        assert info["timesteps"] == [999, 499]
    else:
        assert info["timesteps"] == pytest.approx([0.999, 0.499], rel=1e-4)
    assert "2-step student" in (exported / "README.md").read_text()
    again = load_student(exported)
    assert again.info.steps == 2
    torch.testing.assert_close(again.sample(2, seed=1, cond="a cat"), student.sample(2, seed=1, cond="a cat"),
                               rtol=1e-5, atol=1e-6)
    one = student.sample(2, seed=1, cond="a cat", steps=1)
    assert (one - student.sample(2, seed=1, cond="a cat")).abs().max() > 1e-4
