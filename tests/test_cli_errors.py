"""Everything a user can get wrong on the command line ends the same way: one line
``fastdistill <command>: <message>`` on stderr and exit code 2, before any work is done where
that is possible; ``--debug`` / ``FASTDISTILL_DEBUG=1`` shows the traceback instead, and bugs
keep theirs. Each test names the defect it pins down.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdistill
from fastdistill.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: a tiny run: a few fit steps, two iterations, no evaluation, no tracking
TINY = ["teacher.fit_steps=5", "steps=2", "batch_size=16", "eval_samples=16", "eval_every=0", "progress=false",
        "ckpt_every=0", "log_every=1", "nvtx=false", "threads=1", "log.tensorboard=false"]
SIGN = ["method.bank_size=32", "method.bank_steps=2"]


def _one_line_error(capsys, command: str) -> str:
    """The captured stderr: exactly one line, ``fastdistill <command>: ...``, no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastdistill {command}: "), err
    assert "Traceback" not in err
    return lines[0]


def _bad_cuda_device() -> str:
    """A CUDA device that does not exist here (cuda without a GPU, else an index past the last)."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def toy_student(tmp_path_factory):
    """An unconditional SIGN student on the 2-D ring (vector data, multi-step)."""
    out = tmp_path_factory.mktemp("toy-sign")
    assert main(["distill", "--preset", "toy-sign", *TINY, *SIGN, f"out_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def digits_student(tmp_path_factory):
    """A class-conditional SiD student of the shipped digits teacher (1-channel 8x8 images)."""
    out = tmp_path_factory.mktemp("digits")
    assert main(["distill", "--preset", "digits", *TINY, "eval_data=none", f"out_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.pkl").write_bytes(b"")
    (d / "text.pkl").write_text("not a checkpoint\n")
    (d / "random.bin").write_bytes(np.random.default_rng(0).bytes(300))
    shipped = (Path(fastdistill.__file__).parent / "assets" / "digits_teacher.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(shipped[:len(shipped) // 2])
    (d / "truncated.pkl").write_bytes(pickle.dumps({"ema": list(range(100))}, protocol=4)[:40])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (d / "evil.pkl").write_bytes(pickle.dumps({"ema": Evil()}, protocol=4))
    (d / "bad.toml").write_text("steps = = 3\n")
    (d / "bad.json").write_text('{"steps": \n')
    (d / "list.json").write_text("[1, 2]\n")
    (d / "afile").write_text("a regular file\n")
    return d


# ------------------------------------------------------------------ defect 6: one error path, rc 2
@pytest.mark.parametrize("teacher, message", [
    ("missing.pkl", "no such file"),
    ("empty.pkl", "empty"),
    ("truncated.safetensors", "truncated"),
    ("truncated.pkl", "truncated"),
    ("text.pkl", "cannot load a teacher"),
    ("random.bin", "cannot load a teacher"),
    ("evil.pkl", "refusing to load"),
])
def test_defect6_teacher_load_failures_are_one_line(bad_files, tmp_path, capsys, teacher, message):
    rc = main(["distill", "--preset", "digits", "--teacher", str(bad_files / teacher), *TINY,
               f"out_dir={tmp_path / 'run'}"])
    assert rc == 2 and message in _one_line_error(capsys, "distill")


@pytest.mark.parametrize("config, message", [
    ("bad.toml", "not valid TOML"),
    ("bad.json", "not valid JSON"),
    ("list.json", "top level must be a table"),
    ("nope.json", "not found"),
])
def test_defect6_malformed_config_files_are_one_line(bad_files, capsys, config, message):
    assert main(["distill", "--config", str(bad_files / config)]) == 2
    line = _one_line_error(capsys, "distill")
    assert message in line and config in line
    assert main(["config", "--config", str(bad_files / config)]) == 2
    assert message in _one_line_error(capsys, "config")


@pytest.mark.parametrize("override, message", [
    ("resume={missing}", "no such checkpoint"),
    ("device=" + _bad_cuda_device(), "CUDA device"),
    ("teacher.name=nope", "unknown analytic teacher"),
    ("out_dir=", "out_dir must not be empty"),
])
def test_defect6_bad_settings_are_one_line(tmp_path, capsys, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    argv = ["distill", "--preset", "toy", *TINY, f"out_dir={run}", override.format(missing=tmp_path / "missing")]
    assert main(argv) == 2
    assert message in _one_line_error(capsys, "distill")
    assert not (tmp_path / "checkpoints").exists()  # nothing written into the current directory


def test_defect6_device_and_backend_are_checked_before_any_work(tmp_path, capsys):
    # a backend that cannot run on the run's device: refused by validation, before the teacher fit
    # and the first evaluation, before the output directory is even created
    run = tmp_path / "run"
    rc = main(["distill", "--preset", "toy", *TINY, "device=cpu", "method.backend=cuda", f"out_dir={run}"])
    assert rc == 2 and "method.backend=cuda" in _one_line_error(capsys, "distill")
    assert not run.exists()
    rc = main(["distill", "--preset", "toy", *TINY, f"device={_bad_cuda_device()}", f"out_dir={run}"])
    assert rc == 2 and "CUDA device" in _one_line_error(capsys, "distill")
    assert not run.exists()
    assert main(["config", "--preset", "toy", "device=cpu", "method.backend=cuda"]) == 2
    assert "cannot run" in _one_line_error(capsys, "config")


def test_defect6_init_fit_needs_a_teacher_with_sample(tmp_path, capsys):
    # the toy preset fits an MLP to the teacher's samples; the digits network teacher has none
    rc = main(["distill", "--preset", "toy", "--teacher", "digits", *TINY, "teacher.fit_steps=1000000",
               f"out_dir={tmp_path / 'run'}"])
    assert rc == 2
    line = _one_line_error(capsys, "distill")
    assert "sample()" in line and "teacher.init=teacher" in line


def test_fid_tracking_without_torch_fidelity_is_one_line(tmp_path, capsys, monkeypatch):
    """torch-fidelity is optional: without it a digits run stops before training and names eval_data=none."""
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # `import torch_fidelity` fails, find_spec says None
    run = tmp_path / "run"
    assert main(["distill", "--preset", "digits", *TINY, f"out_dir={run}"]) == 2
    line = _one_line_error(capsys, "distill")
    assert "needs torch-fidelity" in line and "eval_data=none" in line
    assert not run.exists()


def test_defect6_output_under_a_regular_file(toy_student, bad_files, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    blocked = bad_files / "afile"
    assert main(["sample", str(toy_student), "-n", "4", "--out", str(blocked / "sub" / "s")]) == 2
    assert "not a directory" in _one_line_error(capsys, "sample")
    assert main(["project", str(toy_student), "--input", str(tmp_path / "x.npy"), "--out", str(blocked / "o.npy")]) == 2
    assert "not a directory" in _one_line_error(capsys, "project")
    assert blocked.read_text() == "a regular file\n"


def test_defect6_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch, capsys):
    from fastdistill.engine import ConfigError
    from fastdistill.engine.config import DistillConfig

    argv = ["distill", "--preset", "toy", f"resume={tmp_path / 'missing'}", f"out_dir={tmp_path / 'run'}"]
    with pytest.raises(ConfigError, match="no such checkpoint"):
        main(["--debug", *argv])
    with pytest.raises(ConfigError, match="no such checkpoint"):
        main([*argv, "--debug"])  # after the command too
    monkeypatch.setenv("FASTDISTILL_DEBUG", "1")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        main(argv)
    monkeypatch.delenv("FASTDISTILL_DEBUG")
    assert main(argv) == 2
    capsys.readouterr()

    def bug(self):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(DistillConfig, "validate", bug)
    with pytest.raises(RuntimeError, match="an internal error"):  # not a user error: not caught
        main(argv)


def test_defect6_no_traceback_in_a_real_process(bad_files, tmp_path):
    """(--debug in a real process: the in-process test above; one start of Python is enough here.)"""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("FASTDISTILL_DEBUG", None)
    cmd = [sys.executable, "-m", "fastdistill.cli", "distill", "--preset", "digits", "--teacher",
           str(bad_files / "evil.pkl"), f"out_dir={tmp_path / 'run'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "refusing to load" in p.stderr


# ------------------------------------------------------------------ defect 8: huge vector inputs
def test_defect8_project_refuses_inputs_that_overflow_float32(toy_student, tmp_path, capsys):
    for value in (1e30, 1e40):
        np.save(tmp_path / "huge.npy", np.full((4, 2), value))
        out = tmp_path / "out.npy"
        assert main(["project", str(toy_student), "--input", str(tmp_path / "huge.npy"), "--out", str(out)]) == 2
        assert "overflow" in _one_line_error(capsys, "project") and not out.exists()
    from fastdistill.projection import MAX_ABS_INPUT, project

    with pytest.raises(ValueError, match="overflow"):
        project(toy_student, np.full((2, 2), 10 * MAX_ABS_INPUT))
    with pytest.raises(ValueError, match="sigma"):
        project(toy_student, np.zeros((2, 2)), sigma=1e30)
    x = project(toy_student, np.full((2, 2), MAX_ABS_INPUT / 10))  # large but fine
    assert torch.isfinite(x).all()


# ------------------------------------------------------------------ defect 9: sample
def test_defect9_sample_arguments(toy_student, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse refuses it
        main(["sample", str(toy_student), "-n", "0"])
    assert e.value.code == 2 and "positive" in capsys.readouterr().err
    for device, message in ((_bad_cuda_device(), "CUDA device"), ("foo", "not a device")):
        assert main(["sample", str(toy_student), "-n", "4", "--device", device, "--out", str(tmp_path / "s")]) == 2
        assert message in _one_line_error(capsys, "sample")
    assert not list(tmp_path.iterdir())
    pytest.importorskip("matplotlib")  # the 2-D samples' picture is a scatter plot
    # a trailing slash or an existing directory: samples.npz / samples.png inside it
    for out in (tmp_path / "new", tmp_path / "existing"):
        if out.name == "existing":
            out.mkdir()
        arg = str(out) + ("/" if out.name == "new" else "")
        assert main(["sample", str(toy_student), "-n", "4", "--out", arg]) == 0
        assert (out / "samples.npz").is_file() and (out / "samples.png").is_file()
        assert not (tmp_path / f"{out.name}.png").exists() and not (tmp_path / f"{out.name}.npz").exists()
    assert main(["sample", str(toy_student), "-n", "4", "--out", str(tmp_path / "stem")]) == 0
    assert (tmp_path / "stem.npz").is_file()


# ------------------------------------------------------------------ defect 10: the small ones
def test_defect10_doctor_says_built_no_device(monkeypatch, capsys):
    from fastdistill.ops import registry

    real = registry.backend_status
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(registry, "backend_status",
                        lambda name, dev: (True, "fused CUDA kernel") if (name, dev) == ("cuda", "cuda") else real(name, dev))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.split()[:2] == ["cuda", "cuda"])
    assert "built, no device" in line and " yes " not in line


def test_defect10_inception_message_names_what_eval_accepts(digits_student, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FASTDISTILL_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    rc = main(["eval", "--student", str(digits_student), "--extractor", "inception", "-n", "16",
               "--out", str(tmp_path / "e.json")])
    assert rc == 2
    line = _one_line_error(capsys, "eval")
    assert "FASTDISTILL_INCEPTION_WEIGHTS=/path/to/" in line and "Pass inception_weights=" not in line


def test_defect10_project_names_the_label_flag(digits_student, toy_student, tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.zeros((3, 1, 8, 8), np.float32))
    assert main(["project", str(digits_student), "--input", str(tmp_path / "d.npy"), "--out", str(tmp_path / "o.npy")]) == 2
    line = _one_line_error(capsys, "project")
    assert "--label" in line and "class-conditional" in line and "cond" not in line.replace("conditional", "")
    np.save(tmp_path / "v.npy", np.zeros((3, 2), np.float32))
    assert main(["project", str(toy_student), "--input", str(tmp_path / "v.npy"), "--label", "1",
                 "--out", str(tmp_path / "o.npy")]) == 2
    assert "--label given" in _one_line_error(capsys, "project")
    assert main(["project", str(digits_student), "--input", str(tmp_path / "d.npy"), "--label", "3",
                 "--out", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape == (3, 1, 8, 8)


def test_defect10_rgb_png_is_read_channels_last(digits_student, tmp_path, capsys):
    from PIL import Image

    from fastdistill.projection import project

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert main(["project", str(digits_student), "--input", str(tmp_path / "rgb.png"), "--label", "3",
                 "--out", str(tmp_path / "o.png")]) == 2
    line = _one_line_error(capsys, "project")
    assert "32 channels" not in line and "3 channels" in line and "channels-last" in line and "1-channel 8x8" in line

    class RGB(torch.nn.Module):
        img_channels, img_resolution, label_dim, sigma_data = 3, 8, 0, 0.5

        def forward(self, x, sigma, labels=None):
            return 0.5 * x

    assert project(RGB(), np.zeros((8, 8, 3), np.uint8)).shape == (3, 8, 8)  # (H, W, C), one image
    with pytest.raises(ValueError, match=r"resolution \(32, 32\)"):
        project(RGB(), np.zeros((32, 32, 3), np.uint8))  # right channels, wrong size: not "32 channels"


def test_defect10_empty_out_dir_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--preset", "toy", *TINY, "out_dir="]) == 2
    assert "out_dir must not be empty" in _one_line_error(capsys, "distill")
    assert not list(tmp_path.iterdir())
    assert main(["config", "--preset", "toy", "out_dir= "]) == 2
    capsys.readouterr()


def test_defect10_steps_below_the_run_trains_nothing_and_says_so(toy_student, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(toy_student, run)
    before = (run / "config.json").read_text()
    rc = main(["distill", "--preset", "toy-sign", *TINY, *SIGN, "steps=1", f"out_dir={run}"])
    assert rc == 2
    line = _one_line_error(capsys, "distill")
    assert "already at step 2" in line and "steps=1" in line and "nothing was trained" in line
    assert (run / "config.json").read_text() == before  # the run is left as it was


def test_defect10_options_and_overrides_mix(tmp_path, capsys):
    assert main(["config", "steps=10", "--preset", "toy", "seed=3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["steps"] == 10 and cfg["seed"] == 3 and cfg["out_dir"] == "runs/toy"
    run = tmp_path / "run"
    assert main(["distill", "--preset", "toy", "steps=2", "--teacher", "analytic:8gaussians", *TINY,
                 f"out_dir={run}"]) == 0
    assert json.loads((run / "config.json").read_text())["teacher"]["path"] == "analytic:8gaussians"
