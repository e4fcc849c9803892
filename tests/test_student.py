"""One student, one draw: a trained checkpoint gives the same samples through `Student.sample`,
`fastdistill sample`, `fastdistill eval`, `Student.project` and the trainer, for the same seed.

The student is a class-conditional SIGN student (multi-step) distilled for two iterations from an
exact class-conditional Gaussian-mixture teacher: the numbers are meaningless, the paths are not.
"""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from fastdistill import Conditioning, load_student
from fastdistill.cli import main
from fastdistill.engine import DistillConfig, Distiller, run_distillation
from fastdistill.evaluation import student_samples
from fastdistill.sampling import draw
from fastdistill.teachers import GaussianMixtureTeacher

pytestmark = pytest.mark.usefixtures("one_thread")

N, STEPS, SEED = 12, 3, 5


def _teacher():
    means = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    return GaussianMixtureTeacher(means, stds=0.1, component_labels=[0, 1, 2, 0])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond-sign")
    cfg = DistillConfig().with_overrides([
        "method.name=sign", "method.sign_steps=3", "method.bank_size=32", "method.bank_steps=4",
        "teacher.kind=network", "teacher.init=fit", "teacher.fit_steps=5", "teacher.mlp_hidden=16",
        "steps=2", "batch_size=8", "eval_every=0", "eval_samples=16", "ckpt_every=0", "log_every=1",
        "progress=false", "nvtx=false", "threads=1", f"out_dir={out}", "resume=none", "method.backend=reference"])
    res = run_distillation(cfg, teacher=_teacher())
    return out, res, cfg


def test_the_student_knows_what_it_is(run):
    out, _, _ = run
    s = load_student(out)
    assert s.info.method == "sign" and s.info.label_dim == 3 and s.info.cond_kind == "labels"
    assert s.info.data_shape == (2,) and s.info.sigma_init == 2.5 and s.info.step == 2
    exported = load_student(out / "student.safetensors")
    assert exported.info == s.info


def test_save_pretrained_and_from_pretrained_are_symmetric(run, tmp_path):
    """A pixel student is one safetensors file: written by save_pretrained (a folder path gets
    student.safetensors inside), read back by from_pretrained and load_student, the same samples."""
    from fastdistill.student import Student

    out, _, _ = run
    s = load_student(out)
    folder = s.save_pretrained(tmp_path / "saved")
    assert folder == tmp_path / "saved" / "student.safetensors" and folder.is_file()
    file = s.save_pretrained(tmp_path / "mine.safetensors")
    for back in (Student.from_pretrained(tmp_path / "saved"), Student.from_pretrained(file), load_student(file)):
        assert back.info == s.info
        assert torch.equal(back.sample(N, steps=STEPS, seed=SEED), s.sample(N, steps=STEPS, seed=SEED))
    assert main(["export", str(out), str(tmp_path / "cli.safetensors")]) == 0
    assert Student.from_pretrained(tmp_path / "cli.safetensors").info == s.info
    with pytest.raises(FileNotFoundError, match="no saved student"):
        Student.from_pretrained(tmp_path / "nothing")


def test_sample_eval_cli_and_project_agree_for_one_seed(run, tmp_path):
    out, _, _ = run
    student = load_student(out)
    x = student.sample(N, steps=STEPS, seed=SEED)
    assert x.shape == (N, 2) and torch.isfinite(x).all()
    assert not torch.equal(x, student.sample(N, steps=STEPS, seed=SEED + 1))
    # fastdistill eval's sampler
    x_eval, sec = student_samples(student, N, steps=STEPS, seed=SEED)
    assert torch.equal(x, x_eval) and sec > 0
    # fastdistill sample
    assert main(["sample", str(out), "-n", str(N), "--steps", str(STEPS), "--seed", str(SEED),
                 "--out", str(tmp_path / "s")]) == 0
    assert torch.equal(x, torch.from_numpy(np.load(tmp_path / "s.npz")["samples"]))
    # projection of zeros at sigma_init on the sampler's schedule is sampling, with the draw's labels
    _, cond = draw(N, (2,), SEED, label_dim=3, noises=0)
    y = student.project(torch.zeros(N, 2), sigma=student.info.sigma_init, steps=STEPS, seed=SEED, cond=cond,
                        schedule="karras")
    assert torch.equal(x, y)
    np.save(tmp_path / "zeros.npy", np.zeros((N, 2), np.float32))
    labels = [str(int(i)) for i in cond.labels.argmax(1)]
    assert main(["project", str(out), "--input", str(tmp_path / "zeros.npy"), "--sigma", "2.5", "--steps", str(STEPS),
                 "--schedule", "karras", "--seed", str(SEED), "--label", *labels, "--out", str(tmp_path / "p.npy")]) == 0
    assert torch.equal(x, torch.from_numpy(np.load(tmp_path / "p.npy")))


def test_the_trainer_draws_like_the_student(run):
    out, _, cfg = run
    d = Distiller(cfg.with_overrides(["resume=auto"]), teacher=_teacher())  # resumes the finished run's EMA
    assert torch.equal(d.student_samples(N, seed=SEED), load_student(out).sample(N, seed=SEED))


def test_class_labels_select_the_samples(run):
    out, _, _ = run
    s = load_student(out)
    a = s.sample(N, seed=SEED, cond=1)
    assert torch.equal(a, s.sample(N, seed=SEED, cond=[1] * N))
    assert torch.equal(a, s.sample(N, seed=SEED, cond=Conditioning.from_labels(1, 3, n=N)))
    assert not torch.equal(a, s.sample(N, seed=SEED, cond=2))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        s.sample(N, cond=3)
    with pytest.raises(ValueError, match="class-conditional"):
        s.project(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        s.project(torch.zeros(2, 3), cond=0)


def test_one_step_students_refuse_multi_step(tmp_path):
    from tests._engine_helpers import tiny_config, tiny_teacher

    teacher = tiny_teacher(0)
    run_distillation(tiny_config(tmp_path, steps=1), teacher=teacher)
    s = load_student(tmp_path, network=teacher)
    assert s.info.method == "sid" and s.sample(4).shape == (4, 2)
    with pytest.raises(ValueError, match="one-step generator"):
        s.sample(4, steps=2)


def test_missing_and_wrong_paths_are_clear_errors(tmp_path):
    from fastdistill.metrics import EvalError
    from fastdistill.teachers import save_teacher

    with pytest.raises(FileNotFoundError, match="not found"):
        load_student(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no distillation checkpoint"):
        load_student(tmp_path)
    p = save_teacher(_teacher_net(), str(tmp_path / "t.safetensors"))
    with pytest.raises(EvalError, match="not an exported student"):
        load_student(p)


def _teacher_net():
    from fastdistill.teachers import MLPDenoiser

    return MLPDenoiser(2)


def test_sample_cli_beside_an_export_and_without_matplotlib(run, monkeypatch, capsys):
    out, _, _ = run
    assert main(["sample", str(out / "student.safetensors"), "-n", "4"]) == 0
    assert (out / "samples-seed0.npz").is_file()
    assert (out / "samples-seed0.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    for name in [m for m in list(sys.modules) if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["sample", str(out), "-n", "4", "--seed", "9"]) == 0  # 2-D samples: a matplotlib scatter
    assert (out / "samples-seed9.npz").is_file() and not (out / "samples-seed9.png").exists()
    assert "picture skipped" in capsys.readouterr().err
