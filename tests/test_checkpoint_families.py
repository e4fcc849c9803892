"""Every registered checkpoint family (the teachers that are not diffusers pipelines) lives in its
own file under teachers/families/, is found by its name or by what its files are, and loads a
frozen Denoiser. A family added without an example here fails the last test."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from fastdistill.teachers import Denoiser, MLPDenoiser, load_teacher, save_teacher
from fastdistill.teachers.families import CheckpointFamily, checkpoint_families, named_family
from fastdistill.teachers.loading import sniff_format


def _edm_pickle(tmp_path, request):
    return request.getfixturevalue("testvectors") / "edm_ddpmpp_tiny.pkl"


def _unet_folder(tmp_path, request):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional dependency")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=None)
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    return tmp_path


EXAMPLES = {  # format -> (a spec of it, given a folder to write into and the test's request)
    "digits": lambda tmp_path, request: "digits",
    "analytic:": lambda tmp_path, request: "analytic:ring64",
    "edm_pickle": _edm_pickle,
    "safetensors": lambda tmp_path, request: save_teacher(MLPDenoiser(2), tmp_path / "t.safetensors"),
    "fastdistill_dir": lambda tmp_path, request: save_teacher(MLPDenoiser(2), tmp_path / "t"),
    "diffusers_model": _unet_folder,
}


def test_each_checkpoint_family_is_a_registered_class_in_its_own_file():
    files = [inspect.getfile(type(f)) for f in checkpoint_families().values()]
    for fmt, family in checkpoint_families().items():
        assert isinstance(family, CheckpointFamily) and family.format == fmt and family.name
        assert getattr(type(family), "load") is not CheckpointFamily.load, f"{type(family).__name__} does not load"
        assert Path(inspect.getfile(type(family))).parent.name == "families"
    modules = {f: [fmt for fmt, fam in checkpoint_families().items() if inspect.getfile(type(fam)) == f] for f in files}
    assert all(len(v) == 1 or {"safetensors", "fastdistill_dir"} == set(v) for v in modules.values()), modules


@pytest.mark.parametrize("fmt", list(checkpoint_families()))
def test_each_checkpoint_family_loads_a_frozen_denoiser(fmt, tmp_path, request):
    assert fmt in EXAMPLES, f"no example of the {fmt} family: add one to EXAMPLES"
    spec = str(EXAMPLES[fmt](tmp_path, request))
    family = checkpoint_families()[fmt]
    assert (named_family(spec) is family) if family.claims(spec) else (sniff_format(spec) == fmt)
    net = load_teacher(spec)
    assert isinstance(net, Denoiser) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    shape = tuple(getattr(net, "data_shape", None) or (net.img_channels, net.img_resolution, net.img_resolution))
    x = torch.randn(2, *shape)
    cond = None
    if net.label_dim:
        from fastdistill import Conditioning

        cond = Conditioning(labels=torch.eye(net.label_dim)[:2])
    with torch.no_grad():
        out = net(x, torch.tensor([0.5, 2.0]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_file_named_like_a_built_in_is_read_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_teacher(MLPDenoiser(2), tmp_path / "digits")  # a folder called "digits" in the working directory
    assert named_family("digits") is None and isinstance(load_teacher("digits"), MLPDenoiser)
