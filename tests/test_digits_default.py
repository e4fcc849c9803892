"""The digits default: presets distilling the shipped digits teacher, a short convergence
check (CI), and the full report (slow)."""
import json
import math
import time

import pytest

pytest.importorskip("torch_fidelity")

from fastdistill.engine.config import preset_config  # noqa: E402
from fastdistill.teachers.digits import digits_teacher_path  # noqa: E402

needs_teacher = pytest.mark.skipif(not digits_teacher_path().is_file(), reason="shipped digits teacher not present")


pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: see conftest.one_thread


@pytest.mark.parametrize("name,method", [("digits", "sid"), ("digits-sim", "sim"), ("digits-dmd", "dmd")])
def test_digits_presets(name, method):
    cfg = preset_config(name).validate()
    assert cfg.method.name == method
    assert cfg.teacher.kind == "checkpoint" and cfg.teacher.path == "digits" and cfg.teacher.init == "teacher"
    assert cfg.eval_data == "digits" and cfg.eval_every > 0 and cfg.threads == 1


def test_report_rejects_unknown_method(tmp_path):
    from fastdistill.reports.digits import digits_report

    with pytest.raises(ValueError, match="unknown method"):
        digits_report(tmp_path, methods=["gan"], log=None)


def test_report_rejects_bad_overrides_before_any_work(tmp_path):
    from fastdistill.engine import ConfigError
    from fastdistill.reports.digits import digits_report

    with pytest.raises(ConfigError, match="no_such_key"):
        digits_report(tmp_path, overrides=["no_such_key=1"], log=None)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ConfigError, match="sets method.name itself"):
        digits_report(tmp_path, overrides=["method.name=sign"], log=None)


def test_distill_cli_default_is_the_report_and_report_flags_need_it(capsys):
    from fastdistill.cli import main

    assert main(["distill", "--preset", "toy", "--methods", "sid"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["distill", "--methods", "gan"]) == 2  # the default: the report, which names the bad method
    assert "unknown method" in capsys.readouterr().err
    assert main(["distill", "--draws", "0", "--budget", "60", "--workers", "1"]) == 2
    assert "draws" in capsys.readouterr().err


def test_draws_merge_and_verdict():
    from fastdistill.reports.common import merge_draws
    from fastdistill.reports.digits import _verdict

    t = merge_draws([dict(draw=1, fid=0.12), dict(draw=0, fid=0.10, kid_mean=0.01, label="teacher"), dict(draw=2, fid=0.11)])
    assert t["fid_draws"] == [0.10, 0.12, 0.11] and t["kid_mean"] == 0.01 and "draw" not in t
    assert t["fid"] == pytest.approx(0.11) and t["fid_std"] == pytest.approx(0.01)
    better = merge_draws([dict(draw=k, fid=f, label="SiD student, 1 step") for k, f in enumerate((0.09, 0.10, 0.08))])
    assert "at or below the teacher" in _verdict(better, t) and better["meets_target"]
    close = merge_draws([dict(draw=k, fid=f, label="SIM student, 1 step") for k, f in enumerate((0.115, 0.125, 0.12))])
    text = _verdict(close, t)
    assert not close["meets_target"] and "above the teacher by 0.010" in text and "within draw noise" in text
    far = merge_draws([dict(draw=k, fid=f, label="DMD student, 1 step") for k, f in enumerate((0.30, 0.31, 0.29))])
    assert "within draw noise" not in _verdict(far, t)
    single = merge_draws([dict(fid=0.2)])
    assert single["fid_std"] is None and single["fid_draws"] == [0.2]


@needs_teacher
def test_short_digits_distillation_improves_fid(tmp_path):
    """A few hundred SiD steps with the shipped teacher: the one-step student's FID falls well
    below the initial generator's (the teacher's one-step denoiser at sigma_init)."""
    from fastdistill.engine.loop import run_distillation
    from fastdistill.engine.evaluator import read_jsonl

    t0 = time.time()
    res = run_distillation("digits", overrides=[f"out_dir={tmp_path}", "steps=150", "batch_size=16",
                                                 "eval_every=150", "eval_samples=256", "log_every=50"])
    elapsed = time.time() - t0
    q = res.quality
    assert math.isfinite(q.initial) and math.isfinite(q.student)
    assert q.student < 0.5 * q.initial, q
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert "fid_initial" in rows[0] and rows[-1]["step"] == 150 and "fid_student" in rows[-1]
    print(f"digits SiD 150 steps: FID {q.initial:.3f} -> {q.student:.3f} in {elapsed:.0f} s")
    pytest.importorskip("matplotlib")  # the curve
    assert (tmp_path / "fid_vs_iterations.png").is_file()


@needs_teacher
@pytest.mark.slow
def test_digits_report(tmp_path):
    """The full report (about 10 minutes on 2 CPU cores): table, JSON and pictures."""
    from fastdistill.reports.digits import digits_report, format_report

    rep = digits_report(tmp_path, log=None)
    text = format_report(rep)
    print(text)
    d = json.loads((tmp_path / "report.json").read_text())
    assert {r["method"] for r in d["student_rows"]} == {"sid", "sim", "dmd"}
    assert {(r["solver"], r["steps"]) for r in d["teacher_rows"]} >= {("heun", k) for k in (1, 2, 4, 8, 18)}
    for r in d["student_rows"]:
        assert r["fid"] < r["fid_initial"]
    assert rep.elapsed_s < 900
    pytest.importorskip("matplotlib")  # the pictures
    for k in ("teacher_samples", "samples", "fid_vs_iterations"):
        assert (tmp_path / f"{k}.png").is_file()


def test_progress_line_reads_the_run_log(tmp_path):
    from fastdistill.reports.common import run_progress

    assert run_progress("sid", tmp_path) == "sid step 0"
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "fid_initial": 1.7}\n{"step": 100, "fid_student": 0.25}\n'
                                           '{"step": 150, "loss_gen": 1.0}\n')
    assert run_progress("sid", tmp_path) == "sid step 150 FID 0.250"


@needs_teacher
def test_small_report_end_to_end(tmp_path):
    """The main job's plumbing at toy size: teacher rows with draws, a student run, table, JSON, pictures."""
    from fastdistill.reports.digits import digits_report, format_report

    lines = []
    rep = digits_report(tmp_path, methods=["dmd"], n=64, draws=2, teacher_steps=(1,), solvers=("euler",), workers=1,
                        overrides=["steps=4", "batch_size=8", "eval_every=2", "log_every=2"], log=lines.append,
                        progress_every=1.0)
    d = json.loads((tmp_path / "report.json").read_text())
    assert {(r["solver"], r["steps"]) for r in d["teacher_rows"]} == {("euler", 1), ("heun", 18)}
    head = next(r for r in d["teacher_rows"] if r["steps"] == 18)
    assert len(head["fid_draws"]) == 2 and head["fid_std"] is not None
    (s,) = d["student_rows"]
    assert s["method"] == "dmd" and s["train_steps"] == 4 and len(s["fid_draws"]) == 2 and s["ms_per_sample"] > 0
    assert isinstance(s["meets_target"], bool) and len(d["verdicts"]) == 1
    # every row is the evaluation core's (fastdistill eval's): what was scored and what one sample costs
    assert s["source"] == s["run_dir"] and (s["steps"], s["nfe"], s["passes"]) == (1, 1, 1)
    assert head["source"] == "digits"
    assert (head["nfe"], head["passes"]) == (35, 35)
    text = format_report(rep)
    assert "DMD student" in text and "teacher Heun 18 steps" in text and "(2)" in text
    assert any("distilling dmd" in line for line in lines)
    pytest.importorskip("matplotlib")  # the pictures
    for k in ("teacher_samples", "samples", "fid_vs_iterations"):
        assert (tmp_path / f"{k}.png").is_file()
