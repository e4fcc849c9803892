"""EDM-compatible networks and preconditioners: agreement with NVIDIA's outputs (shared test
vectors), EDM checkpoint naming, every architecture option, and the preconditioning formulas."""
import math

import pytest
import torch

from fastdistill.teachers import DhariwalUNet, EDMPrecond, SongUNet, VEPrecond, VPPrecond, load_teacher
from fastdistill.teachers.base import Denoiser

ARCHS = ["ddpmpp", "ncsnpp", "adm"]


def _vectors(testvectors, arch):
    from safetensors.torch import load_file

    return load_file(str(testvectors / f"edm_{arch}_tiny.safetensors"))


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_nvidia_edm_outputs(testvectors, arch):
    """Our networks, with the released weights, reproduce NVIDIA EDM's D and D_aug."""
    v = _vectors(testvectors, arch)
    net = load_teacher(testvectors / f"edm_{arch}_tiny.safetensors")
    assert isinstance(net, EDMPrecond)
    with torch.no_grad():
        D = net(v["input.x"], v["input.sigma"], v["input.class_labels"])
        D_aug = net(v["input.x"], v["input.sigma"], v["input.class_labels"],
                    augment_labels=v["input.augment_labels"])
    assert D.dtype == torch.float32
    torch.testing.assert_close(D, v["output.D"], rtol=0, atol=1e-5)
    torch.testing.assert_close(D_aug, v["output.D_aug"], rtol=0, atol=1e-5)
    # Augmentation labels really are used (the two references differ).
    assert (v["output.D"] - v["output.D_aug"]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_names_are_edm_names(testvectors, arch):
    from safetensors.torch import load_file

    ref = {k[len("state."):]: t for k, t in load_file(str(testvectors / f"edm_{arch}_tiny.safetensors")).items()
           if k.startswith("state.")}
    net = load_teacher(testvectors / f"edm_{arch}_tiny.safetensors")
    ours = net.state_dict()
    assert sorted(ours) == sorted(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_denoiser_protocol_attributes():
    for net in (_tiny_edm("SongUNet"), _tiny_edm("DhariwalUNet"), VPPrecond(8, 3, model_type="SongUNet", **_SONG),
                VEPrecond(8, 3, model_type="SongUNet", **_SONG)):
        assert isinstance(net, Denoiser)
        assert net.img_resolution == 8 and net.img_channels == 3 and net.label_dim == 0
        assert net.sigma_data == 0.5
        assert 0 <= net.sigma_min < net.sigma_max
        assert isinstance(net.init_kwargs, dict)


_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
_ADM = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


def _tiny_edm(model_type, **kw):
    base = dict(_SONG if model_type == "SongUNet" else _ADM)
    base.update(kw)
    return EDMPrecond(img_resolution=8, img_channels=3, model_type=model_type, **base)


@pytest.mark.parametrize("options", [
    dict(embedding_type="positional", encoder_type="standard", decoder_type="standard"),
    dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    dict(encoder_type="skip", decoder_type="skip"),
    dict(encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1], embedding_type="fourier"),
    dict(label_dim=4, augment_dim=9, dropout=0.1, label_dropout=0.2),
    dict(channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8, 2], channel_mult_emb=2),
])
def test_songunet_options_forward_backward(options):
    torch.manual_seed(0)
    label_dim = options.pop("label_dim", 0)
    net = EDMPrecond(8, 3, label_dim=label_dim, model_type="SongUNet", **{**_SONG, **options})
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.eye(4)[:2] if label_dim else None
    aug = torch.randn(2, 9) if options.get("augment_dim") else None
    out = net(x, torch.tensor([0.3, 5.0]), labels, augment_labels=aug)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    keys = net.state_dict().keys()
    if options.get("encoder_type") == "skip":
        assert "model.enc.4x4_aux_skip.weight" in keys and "model.enc.4x4_aux_down.resample_filter" in keys
    if options.get("encoder_type") == "residual":
        assert "model.enc.4x4_aux_residual.weight" in keys
    if options.get("decoder_type") == "skip":
        assert "model.dec.8x8_aux_up.resample_filter" in keys and "model.dec.4x4_aux_conv.weight" in keys
    if options.get("embedding_type") == "fourier":
        assert "model.map_noise.freqs" in keys
    if options.get("augment_dim"):
        assert "model.map_augment.weight" in keys and "model.map_augment.bias" not in keys


@pytest.mark.parametrize("options", [dict(), dict(label_dim=5, augment_dim=9, dropout=0.1),
                                     dict(channel_mult=[1, 1, 2], num_blocks=2, attn_resolutions=[4, 2])])
def test_dhariwalunet_options_forward_backward(options):
    torch.manual_seed(0)
    label_dim = options.pop("label_dim", 0)
    net = EDMPrecond(8, 3, label_dim=label_dim, model_type="DhariwalUNet", **{**_ADM, **options})
    # ADM zero-initialises its output layer; perturb so the network path matters.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    labels = torch.eye(5)[:3] if label_dim else None
    out = net(x, torch.tensor([0.01, 1.0, 50.0]), labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert "model.out_conv.weight" in net.state_dict()
    if label_dim:
        assert "model.map_label.weight" in net.state_dict() and "model.map_label.bias" not in net.state_dict()


def test_dropout_active_only_in_train_mode():
    torch.manual_seed(0)
    net = _tiny_edm("SongUNet", dropout=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 1.0])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, s), net(x, s))
        net.train()
        assert not torch.equal(net(x, s), net(x, s))


def _perturbed(net):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def test_edm_preconditioning_formula():
    net = _perturbed(_tiny_edm("SongUNet"))
    x = torch.randn(3, 3, 8, 8)
    sigma = torch.tensor([0.002, 0.5, 80.0])
    sd = 0.5
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        F_x = net.model(x / (s**2 + sd**2).sqrt(), sigma.log() / 4, None)
        expected = sd**2 / (s**2 + sd**2) * x + s * sd / (s**2 + sd**2).sqrt() * F_x
        torch.testing.assert_close(net(x, sigma), expected, rtol=1e-6, atol=1e-6)
        # sigma as a scalar, a (B,1,1,1) tensor (SiD's call) or a python float broadcast alike
        one = net(x, torch.full((3,), 2.5))
        torch.testing.assert_close(net(x, torch.tensor(2.5)), one, rtol=0, atol=0)
        torch.testing.assert_close(net(x, 2.5), one, rtol=0, atol=0)
        torch.testing.assert_close(net(x, torch.full((3, 1, 1, 1), 2.5)), one, rtol=0, atol=0)
        # float64 input: computed and returned in float32
        assert net(x.double(), sigma).dtype == torch.float32
        # use_fp16 has no effect on CPU
        net.use_fp16 = True
        torch.testing.assert_close(net(x, sigma), expected, rtol=1e-6, atol=1e-6)


def test_vp_and_ve_preconditioning_formulas():
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.01, 20.0])
    s = sigma.reshape(-1, 1, 1, 1)
    vp = _perturbed(VPPrecond(8, 3, model_type="SongUNet", **_SONG))
    ve = _perturbed(VEPrecond(8, 3, model_type="SongUNet", **_SONG))
    # EDM's VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1); sigma_min = sigma(1e-5)
    # (computed in float32 as EDM does, which rounds exp(1e-6) - 1: 0.00098 instead of 0.0010)
    assert vp.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)), rel=3e-2)
    assert vp.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-5)
    t = torch.tensor([1e-3, 0.3, 1.0])
    torch.testing.assert_close(vp.sigma_inv(vp.sigma(t)), t, rtol=1e-4, atol=1e-6)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    with torch.no_grad():
        F_vp = vp.model(x / (s**2 + 1).sqrt(), 999 * vp.sigma_inv(sigma), None)
        torch.testing.assert_close(vp(x, sigma), x - s * F_vp, rtol=1e-6, atol=1e-5)
        F_ve = ve.model(x, (0.5 * sigma).log(), None)
        torch.testing.assert_close(ve(x, sigma), x + s * F_ve, rtol=1e-6, atol=1e-5)


def test_class_labels_required_and_defaulted():
    net = _perturbed(EDMPrecond(8, 3, label_dim=4, model_type="DhariwalUNet", **_ADM))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        # EDM semantics: missing labels mean the all-zero label vector
        torch.testing.assert_close(net(x, torch.ones(2)), net(x, torch.ones(2), torch.zeros(2, 4)))
        a = net(x, torch.ones(2), torch.eye(4)[[0, 1]])
        b = net(x, torch.ones(2), torch.eye(4)[[2, 3]])
    assert (a - b).abs().max() > 0
    with pytest.raises(ValueError, match="class-conditional"):
        net.model(x, torch.zeros(2), None)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="embedding_type"):
        SongUNet(8, 3, 3, embedding_type="sinusoid")
    with pytest.raises(ValueError, match="encoder_type"):
        SongUNet(8, 3, 3, encoder_type="fancy")
    with pytest.raises(ValueError, match="model_type"):
        EDMPrecond(8, 3, model_type="UNet2DModel")
    assert isinstance(DhariwalUNet(8, 3, 3, **_ADM), torch.nn.Module)


@pytest.mark.gpu
def test_use_fp16_runs_network_in_half_on_cuda():
    net = _perturbed(_tiny_edm("DhariwalUNet")).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    sigma = torch.tensor([0.5, 5.0], device="cuda")
    with torch.no_grad():
        ref = net(x, sigma)
        net.use_fp16 = True
        half = net(x, sigma)
        forced = net(x, sigma, force_fp32=True)
    assert half.dtype == torch.float32
    torch.testing.assert_close(forced, ref, rtol=0, atol=0)
    torch.testing.assert_close(half, ref, rtol=1e-2, atol=1e-2)
    assert not torch.equal(half, ref)


def test_network_runs_in_the_input_dtype():
    """Weights stay float32 and are cast to the activations (the fp16 path of use_fp16)."""
    for model_type in ("SongUNet", "DhariwalUNet"):
        net = _perturbed(_tiny_edm(model_type))
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            ref = net.model(x, torch.zeros(2), None)
            out = net.model(x.to(torch.bfloat16), torch.zeros(2), None)
        assert out.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in net.parameters())
        torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.05)


def test_bf16_autocast_of_an_edm_network():
    """precision=bf16 autocasts the forward: the output is float32 and close to the fp32 one
    (this used to fail with "network returned torch.bfloat16, expected torch.float32")."""
    net = _perturbed(_tiny_edm("SongUNet"))
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        ref = net(x, sigma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)


def test_bf16_distillation_of_an_edm_teacher(tmp_path):
    from fastdistill.engine import run_distillation
    from tests._engine_helpers import tiny_config

    r = run_distillation(tiny_config(tmp_path, precision="bf16", steps=2, batch_size=4), teacher=_tiny_edm("SongUNet"))
    assert r.step == 2 and r.nan_steps == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_matches_explicit_softmax(dtype):
    """SDPA in the channel-first layout = EDM's einsum form (weights softmax(q^T k / sqrt C))."""
    from fastdistill.teachers.networks import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 16, 20, generator=g, dtype=dtype) * 2 for _ in range(3))
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(16)).softmax(dim=2)
    expected = torch.einsum("nqk,nck->ncq", w, v)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention(q, k, v), expected, **tol)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(attention, [t.detach().requires_grad_() for t in (q, k, v)])
