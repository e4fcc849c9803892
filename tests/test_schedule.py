"""A teacher's noise schedule (fastdistill.teachers.schedule) against diffusers' own schedulers."""
import math

import pytest
import torch

from fastdistill.methods import ConfigError, method_config, noise_levels
from fastdistill.teachers import load_teacher
from fastdistill.teachers.schedule import DiscreteSchedule, FlowSchedule, NoiseSchedule, schedule_of
from fastdistill.teachers.traits import traits


def test_flow_schedule_is_diffusers_flow_time():
    """sigma_VE = t / (1 - t) at diffusers' unshifted flow time t = timestep / T, and back."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional dependency")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    s = FlowSchedule(1000)
    ts = sched.timesteps[1::97].double()  # the scheduler's own timesteps below t = 1 (pure noise, sigma inf)
    t = ts / 1000
    torch.testing.assert_close(s.sigma_at(ts).double(), t / (1 - t), rtol=1e-6, atol=0)
    torch.testing.assert_close(s.timestep_at(s.sigma_at(ts).double()), ts, rtol=1e-6, atol=1e-6)
    assert (s.sigma_min, s.sigma_max, s.weighting) == (1 / 999, 999.0, "flow")
    g = torch.Generator().manual_seed(0)
    drawn = s.timestep_at(s.draw(20, 980, 4096, g, "cpu").double())
    assert 20 <= float(drawn.min()) and float(drawn.max()) < 980 and drawn.frac().abs().max() > 0  # continuous


def test_discrete_schedule_is_the_teachers_grid():
    """sigma_t = sqrt((1 - abar_t) / abar_t) of diffusers' DDPMScheduler; timestep_at is the teacher's own map."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional dependency")
    from fastdistill.teachers.diffusers_adapter import DiffusersDenoiser

    sched = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="linear")
    abar = sched.alphas_cumprod.double()
    den = DiffusersDenoiser(torch.nn.Identity(), sched.alphas_cumprod, img_channels=3, img_resolution=8)
    s = schedule_of(den)
    assert isinstance(s, DiscreteSchedule) and s.num_timesteps == 100 and s.weighting == "eps"
    ts = torch.tensor([0, 17, 50, 99])
    torch.testing.assert_close(s.sigma_at(ts), ((1 - abar[ts]) / abar[ts]).sqrt().float())
    torch.testing.assert_close(s.timestep_at(s.sigma_at(ts) * 1.01), ts)  # nearest in log sigma
    assert (s.sigma_min, s.sigma_max) == (den.sigma_min, den.sigma_max)
    assert float(s.round(s.sigma_at(17) * 1.01)) == pytest.approx(float(s.sigma_at(17)), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    drawn = s.draw(10, 30, 1000, g, "cpu")
    grid = s.sigmas[10:30]
    assert bool((drawn[:, None] == grid[None]).any(1).all()) and len(set(drawn.tolist())) == 20  # every level, no others


def test_a_teacher_without_timesteps_has_none():
    t = traits(load_teacher("analytic:8gaussians"))
    assert isinstance(t.schedule, NoiseSchedule) and t.schedule.kind == "edm" and t.schedule.num_timesteps is None
    assert t.schedule.sigma_max == math.inf and float(t.schedule.round(torch.tensor(0.3))) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no timesteps"):
        t.schedule.sigma_at(10)
    with pytest.raises(ConfigError, match="needs a teacher with timesteps"):
        noise_levels(method_config("sid", noise_levels="teacher"), t)


def test_method_levels_read_the_teachers_schedule():
    """A method at the teacher's own levels draws what the schedule draws and starts at its sigma_at(t_init)."""
    cfg = method_config("sid", noise_levels="teacher", t_lo=20, t_hi=980, t_init=625)

    class FlowTraits:  # the one field noise_levels reads besides the guidance checks
        schedule, guidance_distilled, latent = FlowSchedule(1000), False, True

    levels = noise_levels(cfg, FlowTraits())
    assert levels.sigma_init == pytest.approx(0.625 / 0.375, rel=1e-6) and levels.weighting == "flow"
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(levels.generator(8, a, "cpu"), FlowSchedule(1000).draw(20, 980, 8, b, "cpu"))
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\)"):
        noise_levels(method_config("sid", noise_levels="teacher", t_init=1000), FlowTraits())
