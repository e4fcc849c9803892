"""diffusers UNet2DModel + DDPM schedule as an EDM denoiser (docs/algorithms.md section 0)."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional dependency")

from fastdistill.teachers.base import Denoiser
from fastdistill.teachers.diffusers_adapter import DiffusersDenoiser, load_diffusers_teacher


def _tiny_unet(num_class_embeds=None, out_channels=3):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=None,
        num_class_embeds=num_class_embeds,
    )
    with torch.no_grad():  # move weights off their zero init so every path matters
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpm")
    _tiny_unet().save_pretrained(root / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="linear").save_pretrained(root / "scheduler")
    return root


def test_load_and_identity_at_matching_timestep(pipeline_dir):
    den = load_diffusers_teacher(pipeline_dir)
    assert isinstance(den, Denoiser)
    assert (den.img_channels, den.img_resolution, den.label_dim, den.sigma_data) == (3, 8, 0, 0.5)
    sched = diffusers.DDPMScheduler.from_pretrained(pipeline_dir / "scheduler")
    abar = sched.alphas_cumprod.double()
    unet = diffusers.UNet2DModel.from_pretrained(pipeline_dir / "unet").eval()
    ts = torch.tensor([0, 17, 50, 99])
    sigma = ((1 - abar[ts]) / abar[ts]).sqrt().float()
    assert den.sigma_min == pytest.approx(float(((1 - abar[0]) / abar[0]).sqrt()))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g) * (1 + sigma.reshape(4, 1, 1, 1))
    with torch.no_grad():
        D = den(x, sigma)
        eps = unet(x / (1 + sigma.reshape(4, 1, 1, 1) ** 2).sqrt(), ts).sample
    torch.testing.assert_close(den.timestep_for(sigma), ts)
    torch.testing.assert_close(D, x - sigma.reshape(4, 1, 1, 1) * eps, atol=1e-5, rtol=1e-5)
    # a sigma between two grid points snaps to the nearest (log-sigma) timestep
    mid = (sigma[1] * 1.01).reshape(1)
    assert int(den.timestep_for(mid)) == 17
    assert float(den.round_sigma(mid)) == pytest.approx(float(sigma[1]), rel=1e-6)


def test_interpolated_timesteps_and_sampler(pipeline_dir):
    den = load_diffusers_teacher(pipeline_dir, timestep_mode="interpolate")
    sig = den.sigmas
    s = torch.tensor([float(sig[10]), float((sig[10] * sig[11]).sqrt())])
    t = den.timestep_for(s)
    assert float(t[0]) == pytest.approx(10.0, abs=1e-6) and float(t[1]) == pytest.approx(10.5, abs=1e-6)
    from fastdistill.sampling import sample

    out = sample(den, 2, seed=0, num_steps=4)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_load_via_load_teacher_unet_folder_and_v_prediction(tmp_path):
    from fastdistill.teachers import load_teacher

    unet = _tiny_unet(num_class_embeds=4)
    unet.save_pretrained(tmp_path)
    cfg = diffusers.DDPMScheduler(num_train_timesteps=50, prediction_type="v_prediction").config
    (tmp_path / "scheduler_config.json").write_text(json.dumps(dict(cfg)))
    den = load_teacher(str(tmp_path))
    assert isinstance(den, DiffusersDenoiser) and den.label_dim == 4 and den.prediction_type == "v_prediction"
    labels = torch.nn.functional.one_hot(torch.tensor([1, 3]), 4).float()
    sigma = den.sigmas[[5, 30]].float()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        v = unet(x / (1 + sigma.reshape(2, 1, 1, 1) ** 2).sqrt(), torch.tensor([5, 30]), class_labels=torch.tensor([1, 3])).sample
        D = den(x, sigma, labels)
    c = (1 + sigma.reshape(2, 1, 1, 1) ** 2).rsqrt()
    torch.testing.assert_close(D, (x * c - sigma.reshape(2, 1, 1, 1) * v) * c, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="class-conditional"):
        den(x, sigma)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_diffusers_teacher(tmp_path / "missing")
    _tiny_unet().save_pretrained(tmp_path / "u")
    with pytest.raises(FileNotFoundError, match="scheduler_config"):
        load_diffusers_teacher(tmp_path / "u")
    with pytest.raises(ValueError, match="beta schedule"):
        load_diffusers_teacher(tmp_path / "u", scheduler_config={"_class_name": "ScoreSdeVeScheduler", "sigma_max": 50})
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusersDenoiser(_tiny_unet(), torch.linspace(0.99, 0.01, 10), prediction_type="x0")
    den = DiffusersDenoiser(_tiny_unet(), torch.linspace(0.99, 0.01, 10))
    with pytest.raises(ValueError, match=r"\(B, 3"):
        den(torch.randn(2, 1, 8, 8), torch.ones(2))


def test_missing_diffusers_message(monkeypatch, pipeline_dir):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ImportError("No module named 'diffusers'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install diffusers"):
        load_diffusers_teacher(pipeline_dir)
