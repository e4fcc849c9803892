"""The shipped digits teacher (package data) and the `train-teacher` command."""
import argparse
import os
from pathlib import Path

import pytest
import torch

from fastdistill.cli.parsers import add_train_teacher_parser
from fastdistill.teachers import load_teacher
from fastdistill.teachers.base import Denoiser
from fastdistill.teachers.digits import (ARCH_PRESETS, digits_teacher_path,
                                         load_digits_teacher, train_digits_teacher)
from fastdistill.teachers.precond import EDMPrecond

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher():
    return load_digits_teacher()


def _parser():
    parser = argparse.ArgumentParser(prog="fastdistill")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_teacher_parser(sub)
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_shipped_teacher_is_package_data_and_small():
    ref = digits_teacher_path()
    assert ref.is_file(), ref
    # it sits where pyproject's package-data glob ("assets/*") ships it in wheels and sdists
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"assets/*"' in text
    assert Path(str(ref)).parent.name == "assets"
    assert len(ref.read_bytes()) < 2 * 1024 * 1024


def test_shipped_teacher_loads_as_denoiser(teacher, one_thread):
    assert isinstance(teacher, EDMPrecond) and isinstance(teacher, Denoiser)
    assert (teacher.img_channels, teacher.img_resolution, teacher.label_dim) == (1, 8, 10)
    assert teacher.sigma_data == 0.5 and not teacher.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in teacher.parameters())
    x = torch.randn(6, 1, 8, 8)
    y = torch.eye(10)[torch.arange(6)]
    out = teacher(x, torch.full((6,), 1.5), y)
    assert out.shape == (6, 1, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # load_teacher reads the same file; fp16 storage restores exactly the stored values
    from importlib import resources

    with resources.as_file(digits_teacher_path()) as p:
        again = load_teacher(p)
        from safetensors.torch import load_file

        stored = load_file(str(p))
    for k, v in again.state_dict().items():
        assert torch.equal(v, teacher.state_dict()[k])
        assert torch.equal(v, stored[k].to(v.dtype)), k


def test_shipped_teacher_samples_are_digits(teacher, one_thread):
    """Heun samples score a far better FID than 1-step Euler and than noise, and the digits
    classifier reads the requested class from most class-conditional samples."""
    from fastdistill.data import load_dataset
    from fastdistill.metrics import compute_metrics, load_digits_classifier
    from fastdistill.sampling import sample

    ref = load_dataset("digits").data
    n = 200
    heun, labels = sample(teacher, n, seed=0, num_steps=6, solver="heun", return_labels=True)
    euler1 = sample(teacher, n, seed=0, num_steps=1, solver="euler")
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    fid = {name: compute_metrics(s, ref, fid=True, kid=False, prc=False)["fid"]
           for name, s in [("heun", heun), ("euler1", euler1), ("noise", noise)]}
    assert fid["heun"] < 0.3 * fid["euler1"] and fid["heun"] < 0.05 * fid["noise"], fid
    assert fid["heun"] < 1.0, fid
    acc = (load_digits_classifier()(heun).argmax(1) == labels.argmax(1)).float().mean()
    assert acc > 0.85, float(acc)


def test_train_teacher_cli_toy(tmp_path, one_thread, capsys):
    out = tmp_path / "toy.safetensors"
    assert _run(["train-teacher", "--data", "8gaussians", "--out", str(out), "--steps", "20",
                 "--batch-size", "64", "--seed", "1", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    net = load_teacher(out)
    assert type(net).__name__ == "MLPDenoiser" and net.data_shape == (2,)
    assert net(torch.randn(3, 2), torch.ones(3)).shape == (3, 2)


def test_train_teacher_cli_digits(tmp_path, one_thread):
    out = tmp_path / "d.safetensors"
    assert _run(["train-teacher", "--out", str(out), "--arch", "digits-tiny", "--steps", "3",
                 "--batch-size", "16", "--weights-dtype", "float16", "--quiet"]) == 0
    net = load_teacher(out)
    assert isinstance(net, EDMPrecond) and net.label_dim == 10 and net.img_resolution == 8
    assert all(p.dtype == torch.float32 for p in net.parameters())
    y = torch.eye(10)[:2]
    assert net(torch.randn(2, 1, 8, 8), torch.ones(2), y).shape == (2, 1, 8, 8)
    # API: same seed and settings give the same weights; unconditional on request
    a = train_digits_teacher(None, steps=2, batch_size=8, lr=1e-3, seed=3, arch="digits-tiny", progress=False)
    b = train_digits_teacher(None, steps=2, batch_size=8, lr=1e-3, seed=3, arch="digits-tiny", progress=False)
    for (k, v), w in zip(a.teacher.state_dict().items(), b.teacher.state_dict().values()):
        assert torch.equal(v, w), k
    u = train_digits_teacher(None, steps=1, batch_size=4, arch="digits-tiny", conditional=False, progress=False)
    assert u.teacher.label_dim == 0


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "positive integer"),
    (["--steps", "ten"], "positive integer"),
    (["--batch-size", "-4"], "positive integer"),
    (["--lr=-1e-3"], "positive number"),
    (["--lr", "0"], "positive number"),
    (["--lr", "nan"], "positive number"),
    (["--arch", "huge"], "invalid choice"),
    (["--weights-dtype", "int8"], "invalid choice"),
])
def test_train_teacher_cli_rejects_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["train-teacher", "--out", str(tmp_path / "x.safetensors")] + argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_train_teacher_cli_requires_out(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["train-teacher"])
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--data", "no_such_dataset_here"], "neither a built-in dataset"),
    (["--data", "8gaussians", "--arch", "digits-small"], "use --arch mlp"),
])
def test_train_teacher_cli_reports_errors(tmp_path, capsys, extra, message):
    rc = _run(["train-teacher", "--out", str(tmp_path / "x.safetensors"), "--steps", "1", "--quiet"] + extra)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fastdistill train-teacher: error:") and message in err
    assert not (tmp_path / "x.safetensors").exists()


def test_train_teacher_cli_missing_output_directory(tmp_path, capsys):
    rc = _run(["train-teacher", "--out", str(tmp_path / "nodir" / "x.safetensors"), "--steps", "1", "--quiet",
               "--arch", "digits-tiny"])
    assert rc == 2 and "output directory does not exist" in capsys.readouterr().err


def test_api_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        train_digits_teacher(None, steps=0)
    with pytest.raises(ValueError, match="lr"):
        train_digits_teacher(None, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="unknown arch"):
        train_digits_teacher(None, steps=1, arch="nope")
    with pytest.raises(ValueError, match="weights_dtype"):
        train_digits_teacher(None, steps=1, weights_dtype="bfloat16")
    assert "digits-small" in ARCH_PRESETS


def test_cli_wiring():
    from fastdistill import cli

    parser = cli.build_parser()
    args = parser.parse_args(["train-teacher", "--out", os.devnull, "--steps", "1"])
    assert callable(args.func)
