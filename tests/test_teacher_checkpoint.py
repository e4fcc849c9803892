"""fastdistill's teacher format (safetensors + JSON config): exact round trip, the test-vector
layout, load_teacher's dispatch, and clear errors for every broken input."""
import json
import math
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdistill.teachers import (CheckpointError, EDMPrecond, VEPrecond, VPPrecond, load_teacher,
                                  save_teacher)
from fastdistill.teachers.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, load_state_dict_checked,
                                             load_teacher_checkpoint)

_SMALL = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


def _nets():
    torch.manual_seed(0)
    nets = {
        "edm_ddpmpp": EDMPrecond(8, 3, label_dim=4, augment_dim=9, model_type="SongUNet", **_SMALL),
        "edm_ncsnpp": EDMPrecond(8, 3, model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                                 channel_mult_noise=2, resample_filter=[1, 3, 3, 1], **_SMALL),
        "edm_adm": EDMPrecond(8, 3, label_dim=4, model_type="DhariwalUNet", **_SMALL),
        "vp": VPPrecond(8, 3, model_type="SongUNet", encoder_type="skip", decoder_type="skip", **_SMALL),
        "ve": VEPrecond(8, 3, model_type="SongUNet", sigma_max=500, **_SMALL),
    }
    for net in nets.values():
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
        net.eval()
    return nets


def _inputs(net):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.05, 7.0])
    labels = torch.eye(net.label_dim)[:2] if net.label_dim else None
    return x, sigma, labels


def _assert_identical(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    x, sigma, labels = _inputs(a)
    with torch.no_grad():
        assert torch.equal(a(x, sigma, labels), b(x, sigma, labels))  # bit for bit


@pytest.mark.parametrize("layout", ["file", "dir"])
def test_round_trip_is_exact(tmp_path, layout):
    for name, net in _nets().items():
        path = tmp_path / (f"{name}.safetensors" if layout == "file" else name)
        save_teacher(net, path)
        back = load_teacher(path)
        assert type(back) is type(net) and back.init_kwargs == net.init_kwargs
        assert not back.training and not any(p.requires_grad for p in back.parameters())
        _assert_identical(net, back)
        assert back.sigma_min == net.sigma_min and back.sigma_max == net.sigma_max
    # EDMPrecond's default sigma_max is inf: stored as strict JSON and read back exactly.
    cfg = json.loads((tmp_path / "edm_adm" / CONFIG_NAME).read_text()) if layout == "dir" else None
    if cfg is not None:
        assert cfg["init_kwargs"]["sigma_max"] == {"__float__": "inf"}
        assert math.isinf(load_teacher(tmp_path / "edm_adm").sigma_max)
    assert not [p for p in tmp_path.rglob(".tmp_*")]


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp", "adm"])
def test_testvector_round_trip(testvectors, tmp_path, arch):
    v = load_file(str(testvectors / f"edm_{arch}_tiny.safetensors"))
    net = load_teacher(testvectors / f"edm_{arch}_tiny.safetensors")
    save_teacher(net, tmp_path / "t.safetensors")
    back = load_teacher(tmp_path / "t.safetensors")
    _assert_identical(net, back)
    with torch.no_grad():
        D = back(v["input.x"], v["input.sigma"], v["input.class_labels"])
    torch.testing.assert_close(D, v["output.D"], rtol=0, atol=1e-5)


def test_save_refuses_unregistered_module(tmp_path):
    with pytest.raises(TypeError, match="not a registered teacher class"):
        save_teacher(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def _saved(tmp_path):
    net = _nets()["edm_adm"]
    path = tmp_path / "t.safetensors"
    save_teacher(net, path)
    return net, path


def _meta(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_truncated_and_corrupt_safetensors(tmp_path):
    _, path = _saved(tmp_path)
    blob = path.read_bytes()
    for n in (9, 200, len(blob) // 2, len(blob) - 1):
        bad = tmp_path / f"trunc{n}.safetensors"
        bad.write_bytes(blob[:n])
        with pytest.raises(CheckpointError):
            load_teacher(bad)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(blob[:8] + b"{" + b"\xff" * 50 + blob[59:])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_teacher(bad)


def test_weights_only_safetensors_explains(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no teacher description"):
        load_teacher(path)


def _rewrite(path, tensors=None, config=None):
    meta = _meta(path)
    t = load_file(str(path))
    if tensors is not None:
        t = tensors(t)
    if config is not None:
        c = json.loads(meta["config"])
        config(c)
        meta["config"] = json.dumps(c)
    save_file(t, str(path), metadata=meta)


def test_shape_mismatch_is_named_and_nothing_loaded(tmp_path):
    net, path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: {**t, "model.out_conv.weight": torch.zeros(3, 16, 1, 1)})
    with pytest.raises(CheckpointError, match=r"shape mismatch: model\.out_conv\.weight: checkpoint \(3, 16, 1, 1\)"):
        load_teacher(path)
    # load_state_dict_checked validates everything before copying anything.
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = {k: torch.full_like(v, 7.0) for k, v in before.items()}
    bad["model.out_conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_dict_checked(net, bad)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_missing_and_unexpected_keys_named(tmp_path):
    _, path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: {**{k: v for k, v in t.items() if k != "model.map_label.weight"},
                                      "model.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"missing keys: model\.map_label\.weight.*unexpected keys: model\.extra\.weight"):
        load_teacher(path)


def test_bad_config(tmp_path):
    _, path = _saved(tmp_path)
    _rewrite(path, config=lambda c: c.update(class_name="Transformer"))
    with pytest.raises(CheckpointError, match="unknown network class 'Transformer'"):
        load_teacher(path)
    _, path = _saved(tmp_path)
    _rewrite(path, config=lambda c: c["init_kwargs"].update(model_channels=32))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_teacher(path)
    _, path = _saved(tmp_path)
    _rewrite(path, config=lambda c: c.update(format_version=99))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_teacher(path)
    _, path = _saved(tmp_path)
    _rewrite(path, config=lambda c: c["init_kwargs"].update(bogus_option=1))
    with pytest.raises(CheckpointError, match="cannot build EDMPrecond"):
        load_teacher(path)


def test_directory_errors(tmp_path):
    net = _nets()["ve"]
    d = tmp_path / "ckpt"
    save_teacher(net, d)
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        load_teacher_checkpoint(d)
    (d / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError):
        load_teacher(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither a fastdistill teacher"):
        load_teacher(empty)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "nope.pkl")


def test_diffusers_directory_is_delegated(tmp_path, monkeypatch):
    d = tmp_path / "diffusers_unet"
    d.mkdir()
    (d / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    calls = []
    sentinel = torch.nn.Linear(1, 1)
    fake = types.ModuleType("fastdistill.teachers.diffusers_adapter")
    fake.load_diffusers_teacher = lambda path: calls.append(path) or sentinel
    monkeypatch.setitem(sys.modules, "fastdistill.teachers.diffusers_adapter", fake)
    assert load_teacher(d) is sentinel and calls == [str(d)]
    assert not sentinel.training
    # Without the adapter: a clear error, not an ImportError from deep inside.
    monkeypatch.setitem(sys.modules, "fastdistill.teachers.diffusers_adapter", None)
    with pytest.raises(CheckpointError, match="diffusers adapter or diffusers itself"):
        load_teacher(d)
