"""`fastdistill eval`, the loop's periodic FID tracking, and the run curve.

A tiny random digits-shaped teacher (digits-tiny U-Net, not trained) and a 4-step distillation
run make a real checkpoint in a few seconds; the numbers are meaningless, the plumbing is not.
"""
import argparse
import json
import math

import pytest
import torch

pytest.importorskip("torch_fidelity")

from fastdistill.cli.parsers import add_eval_parser  # noqa: E402
from fastdistill.data import load_dataset  # noqa: E402
from fastdistill.engine.evaluator import read_jsonl  # noqa: E402
from fastdistill.engine.loop import run_distillation  # noqa: E402
from fastdistill.evaluation import Model, evaluate_models, format_table  # noqa: E402
from fastdistill.metrics import DIGITS_N, EvalError, reference_data  # noqa: E402
from fastdistill.plotting import line_plot  # noqa: E402
from fastdistill.sampling import draw  # noqa: E402
from fastdistill.teachers.checkpoint import save_teacher  # noqa: E402
from fastdistill.teachers.digits import build_teacher_for_data  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: see conftest.one_thread


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A digits-shaped teacher checkpoint and a 4-step SiD run with FID tracking every 2 steps."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalrun")
    net = build_teacher_for_data("digits-tiny", load_dataset("digits"), seed=0)
    tpath = save_teacher(net, str(root / "tiny_teacher.safetensors"))
    res = run_distillation({"teacher": {"kind": "checkpoint", "path": tpath, "init": "teacher"},
                            "eval_data": "digits", "steps": 4, "batch_size": 8, "eval_every": 2, "eval_samples": 64,
                            "log_every": 1, "ckpt_every": 0, "threads": 1, "progress": False, "nvtx": False,
                            "out_dir": str(root / "run"), "resume": "none", "method": {"backend": "reference"}})
    return tpath, res


def _cli(argv):
    parser = argparse.ArgumentParser(prog="fastdistill")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_loop_logs_fid_and_draws_the_curve(tiny_run):
    _, res = tiny_run
    rows = read_jsonl(f"{res.out_dir}/metrics.jsonl")
    assert "fid_initial" in rows[0] and "fid_data_vs_data" in rows[0] and "fid_teacher_heun35" in rows[0]
    steps = [r["step"] for r in rows if "fid_student" in r]
    assert steps == [2, 4]
    q = res.quality
    assert q.metric == "fid"
    for v in (q.student, q.initial, q.data_vs_data, q.teacher_heun35):
        assert math.isfinite(v)
    pytest.importorskip("matplotlib")  # the curve
    from PIL import Image

    im = Image.open(f"{res.out_dir}/fid_vs_iterations.png")
    assert im.size[0] > 300
    from fastdistill.engine.entry import format_summary

    text = format_summary(res)
    assert "FID" in text and "fid_vs_iterations.png" in text


def test_eval_command_table_and_json(tiny_run, tmp_path, capsys):
    tpath, res = tiny_run
    out = tmp_path / "eval.json"
    rc = _cli(["eval", "--student", res.out_dir, "--teacher", tpath, "--steps", "1,2", "--solver", "heun,euler",
               "-n", "48", "--data", "digits", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "data vs data" in text and "student sid 1 step" in text and "teacher Heun 2 steps" in text
    assert "ms/sample" in text and "FID" in text
    d = json.loads(out.read_text())
    assert d["n"] == 48 and d["reference_n"] == (1797 + 1) // 2
    labels = [r["label"] for r in d["rows"]]
    assert labels == ["teacher Heun 1 step", "teacher Heun 2 steps", "teacher Euler 1 step", "teacher Euler 2 steps",
                      "student sid 1 step"]
    assert [r["nfe"] for r in d["rows"]] == [1, 3, 1, 2, 1]
    for r in d["rows"]:
        for k in ("fid", "kid_mean", "precision", "recall", "ms_per_sample"):
            assert math.isfinite(r[k]), (r["label"], k)
        assert r["ms_per_sample"] > 0
    assert math.isfinite(d["baseline"]["fid"])


def test_eval_infers_digits_and_exported_student(tiny_run):
    _, res = tiny_run
    r = evaluate_models([Model.student(f"{res.out_dir}/student.safetensors")], data="digits", n=32, full=False)
    assert r.rows[0].method == "sid" and math.isfinite(r.rows[0].metrics["fid"])
    assert "kid_mean" not in r.rows[0].metrics
    assert "student sid" in format_table(r)


def test_eval_on_2d_data_uses_sliced_wasserstein():
    r = evaluate_models([Model.teacher("analytic:8gaussians", steps=4, solver="euler")], n=256)
    assert set(r.baseline) == {"sw", "mmd"} and r.rows[0].nfe == 4
    assert r.rows[0].metrics["sw"] > 0 and "SW2" in format_table(r)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = _cli(["eval", "--student", str(tmp_path / "nope"), "--data", "digits", "--out", str(tmp_path / "e.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not found" in err and "nope" in err
    assert not (tmp_path / "e.json").exists()
    rc = _cli(["eval", "--teacher", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "e.json")])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_wrong_data_shape_is_a_clear_error(tiny_run, capsys):
    tpath, _ = tiny_run
    with pytest.raises(EvalError, match=r"shape \(1, 8, 8\).*\(2,\)"):
        evaluate_models([Model.teacher(tpath, steps=1)], data="8gaussians", n=64)
    rc = _cli(["eval", "--teacher", tpath, "--data", "8gaussians", "-n", "64"])
    assert rc == 2 and "shape" in capsys.readouterr().err


def test_bad_n_and_steps_are_clear_errors(tiny_run):
    tpath, res = tiny_run
    with pytest.raises(EvalError, match="held-out"):
        evaluate_models([Model.teacher(tpath, steps=1)], data="digits", n=DIGITS_N + 1)
    with pytest.raises(EvalError, match="one-step generator"):
        evaluate_models([Model.student(res.out_dir, steps=2)], data="digits", n=16)
    with pytest.raises(EvalError, match="which data"):
        evaluate_models([Model.teacher(tpath, steps=1)], n=16)
    with pytest.raises(EvalError, match="solver"):
        Model.teacher(tpath, steps=2, solver="rk4")
    with pytest.raises(SystemExit):
        _cli(["eval", "--steps", "0"])


def test_reference_split_is_fixed_and_disjoint():
    a, b = reference_data("digits"), reference_data("digits")
    assert a.reference.shape[0] == 899 and a.heldout.shape[0] == DIGITS_N
    assert torch.equal(a.reference, b.reference)
    # no image of the held-out half is also in the reference half (as a set of indices)
    x = load_dataset("digits").data.reshape(1797, -1)
    assert a.reference.shape[0] + a.heldout.shape[0] == x.shape[0]


def test_line_plot_handles_curves_and_bad_values(tmp_path):
    pytest.importorskip("matplotlib")
    p = line_plot({"a": [(0, 50.0), (10, 5.0), (20, float("nan"))], "b": [(0, 40.0), (20, 0.5)]},
                  tmp_path / "c.png", title="t", hlines={"teacher": 1.0, "none": None})
    from PIL import Image

    assert Image.open(p).size == (720, 440)


def test_draw_balances_labels_and_is_seeded():
    (z,), cond = draw(898, (1, 8, 8), seed=3, label_dim=10)
    labels = cond.labels
    counts = labels.sum(0)
    assert z.shape == (898, 1, 8, 8) and labels.shape == (898, 10)
    assert counts.max() - counts.min() <= 1 and int(counts.sum()) == 898
    (z2,), cond2 = draw(898, (1, 8, 8), seed=3, label_dim=10)
    assert torch.equal(z, z2) and torch.equal(labels, cond2.labels)
    (z3,), cond3 = draw(898, (1, 8, 8), seed=4, label_dim=10)
    assert not torch.equal(z, z3) and not torch.equal(labels, cond3.labels)
    assert draw(5, (2,), seed=0)[1] is None


def test_trainer_and_eval_draw_the_same_student_samples(tiny_run):
    """The loop's FID tracking and `fastdistill eval` use one draw per seed: same samples."""
    from fastdistill.engine.config import DistillConfig
    from fastdistill.engine.loop import Distiller
    from fastdistill.evaluation import student_samples
    from fastdistill.student import load_student

    _, res = tiny_run
    student = load_student(res.out_dir)
    x_eval, _ = student_samples(student, 20, seed=11)
    cfg = DistillConfig.from_file(f"{res.out_dir}/config.json").with_overrides([f"out_dir={res.out_dir}/again", "resume=none"])
    d = Distiller(cfg.validate())
    x_loop = d.student_samples(20, seed=11, net=student.net)
    assert torch.allclose(x_eval, x_loop, atol=1e-6)
