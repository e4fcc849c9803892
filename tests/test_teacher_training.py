"""EDM teacher training: the loss, the MLP denoiser, a trained 2-D toy teacher, save/load."""
import pytest
import torch

from fastdistill.data import load_dataset
from fastdistill.metrics import mmd_rbf, sliced_wasserstein
from fastdistill.sampling import sample
from fastdistill.teachers.base import Denoiser
from fastdistill.teachers.mlp import MLPDenoiser
from fastdistill.teachers.training import edm_loss, train_teacher


def test_mlp_denoiser_preconditioning():
    net = MLPDenoiser(2, width=32, depth=2, sigma_data=0.7)
    assert isinstance(net, Denoiser) and net.data_shape == (2,) and net.img_channels == 2 and net.img_resolution == 1
    x = torch.randn(5, 2)
    s = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0])
    # zero-initialised output layer: D = c_skip x exactly at init
    torch.testing.assert_close(net(x, s), x * (0.49 / (s**2 + 0.49))[:, None])
    assert net(x.reshape(5, 2, 1, 1), s).shape == (5, 2, 1, 1)
    with pytest.raises(ValueError, match="sigma"):
        net(x, torch.ones(3))
    with pytest.raises(ValueError, match="unconditional"):
        net(x, s, torch.zeros(5, 3))
    cond = MLPDenoiser(2, width=16, depth=1, label_dim=3)
    assert cond(x, s, torch.eye(3)[[0, 1, 2, 0, 1]]).shape == (5, 2)


def test_edm_loss_weighting():
    """lambda * c_out^2 = 1: at init (F = 0) the per-element loss is E|F_target|^2 ~ 1."""
    net = MLPDenoiser(2, sigma_data=0.5)
    x0 = torch.randn(20000, 2) * 0.5
    loss = edm_loss(net, x0, generator=torch.Generator().manual_seed(0))
    assert float(loss.detach()) == pytest.approx(1.0, abs=0.05)
    per = edm_loss(net, x0[:7], reduction="none")
    assert per.shape == (7,)
    with pytest.raises(ValueError, match="reduction"):
        edm_loss(net, x0, reduction="avg")


def test_trained_toy_teacher_matches_data(tmp_path, one_thread):
    """Proof: EDM training on the 8-Gaussian toy lowers the loss; Heun samples ~ the data."""
    torch.manual_seed(0)
    data = load_dataset("8gaussians", std=0.1)
    net = MLPDenoiser(2, width=64, depth=3, sigma_data=data.estimate_sigma_data())
    res = train_teacher(net, data, steps=800, batch_size=256, lr=3e-3, lr_decay="cosine", seed=0,
                        progress=False, save_path=str(tmp_path / "toy.safetensors"))
    L = torch.tensor(res.losses)
    assert L[-100:].mean() < L[:50].mean() - 0.08, (float(L[:50].mean()), float(L[-100:].mean()))
    g = torch.Generator().manual_seed(1)
    ref, _ = data.sample(2000, g)
    ref2, _ = data.sample(2000, g)
    gen = sample(res.teacher, 2000, seed=5)
    gauss = torch.randn(2000, 2, generator=g) * net.sigma_data  # same scale, no structure
    swd_base, swd, swd_gauss = (float(sliced_wasserstein(a, ref)) for a in (ref2, gen, gauss))
    mmd, mmd_gauss = float(mmd_rbf(gen, ref)), float(mmd_rbf(gauss, ref))
    assert swd < 2.0 * swd_base and swd < 0.5 * swd_gauss, (swd, swd_base, swd_gauss)
    assert mmd < 0.25 * mmd_gauss, (mmd, mmd_gauss)
    assert ((gen.norm(dim=1) - 1).abs() < 0.4).float().mean() > 0.97  # mass on the ring
    # the saved EMA teacher reloads exactly
    from fastdistill.teachers import load_teacher

    back = load_teacher(res.path)
    x, s = torch.randn(6, 2), torch.rand(6) + 0.1
    torch.testing.assert_close(back(x, s), res.teacher(x, s))
    assert not any(p.requires_grad for p in res.teacher.parameters())


def test_train_songunet_on_digits_smoke(one_thread):
    """The image path: an EDMPrecond/SongUNet teacher trains on (subsampled) digits."""
    from fastdistill.data import ArrayDataset
    from fastdistill.teachers import EDMPrecond

    digits = load_dataset("digits")
    small = ArrayDataset(digits.data[:64], digits.labels[:64], label_dim=10, name="digits64")
    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=10, model_type="SongUNet",
                     model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                     embedding_type="positional", encoder_type="standard", decoder_type="standard",
                     channel_mult_noise=1, resample_filter=[1, 1], dropout=0.0)
    res = train_teacher(net, small, steps=3, batch_size=8, lr=1e-3, progress=False)
    assert len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    x = sample(res.teacher, 2, seed=0, num_steps=2)
    assert x.shape == (2, 1, 8, 8)


def test_training_errors():
    data = load_dataset("8gaussians")
    with pytest.raises(ValueError, match="expects"):
        train_teacher(MLPDenoiser(3), data, steps=1, progress=False)
    with pytest.raises(ValueError, match="label_dim"):
        train_teacher(MLPDenoiser(2, label_dim=3), data, steps=1, progress=False)
    with pytest.raises(TypeError, match="DataSource"):
        train_teacher(MLPDenoiser(2), [1, 2, 3], steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_teacher(MLPDenoiser(2), data, steps=0, progress=False)
    res = train_teacher(MLPDenoiser(2, width=8, depth=1), torch.randn(100, 2), steps=2, batch_size=4, progress=False)
    assert len(res.losses) == 2
