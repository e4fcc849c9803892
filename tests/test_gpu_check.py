"""scripts/gpu_check.sh: the dry mode end to end (what CI runs, so the GPU check cannot rot), the
GPU-mode flow after a failed build, the time limits, and the parsers of what the GPU steps print."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
STEPS = ["build", "imports", "gpu-tests", "loss-benchmarks", "iteration-benchmark", "sid-digits"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = _module()


def _run_script(*args, env=None):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def _details(out, into):
    """The check's tarball unpacked into ``into``."""
    with tarfile.open(out / gc.DETAILS) as tar:
        tar.extractall(into, filter="data")
    return into


def test_dry_mode_writes_every_step_and_says_why_it_skipped(tmp_path):
    out = tmp_path / "check"
    t0 = time.monotonic()
    proc = _run_script("--dry", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 60  # well under a minute, also on a busy machine
    assert sorted(p.name for p in out.iterdir()) == sorted([gc.SUMMARY, gc.RESULTS, gc.DETAILS])  # what comes back
    text = (out / gc.SUMMARY).read_text().splitlines()
    assert text[0].startswith("fastdistill GPU check: PASS") and "dry mode: --dry given" in text[0]
    assert [line.split()[1] for line in text[1:1 + len(STEPS)]] == STEPS
    assert text[1 + STEPS.index("imports")].startswith("PASS") and text[1].startswith("SKIPPED")
    assert proc.stdout.splitlines()[-len(text):] == text
    summary = json.loads((out / gc.RESULTS).read_text())
    assert summary["status"] == "pass" and summary["mode"] == "dry" and summary["dry_reason"] == "--dry given"
    assert "torch" in summary["environment"] and "packages" in summary["environment"]
    steps = {s["name"]: s for s in summary["steps"]}
    assert [s["name"] for s in summary["steps"]] == STEPS
    details = _details(out, tmp_path / "details")
    for name, s in steps.items():
        assert s["command"], name  # what GPU mode runs
        assert (details / s["log"]).is_file() and (details / s["log"]).read_text().startswith("$ "), name
        if name == "imports":  # the one step that runs in full here
            assert s["status"] == "pass" and s["results"]["modules"] > 40 and not s["results"]["failed"]
            assert "torch_fidelity" in s["results"]["hidden"]
        else:
            assert s["status"] == "skipped (no CUDA)", (name, s["reason"])
            assert s["reason"].startswith("--dry given: ") and s["checked"], name
    assert steps["gpu-tests"]["results"]["tests"]["skipped"] > 0
    assert not steps["gpu-tests"]["results"]["tests"].get("passed")
    assert steps["iteration-benchmark"]["results"]["tests"]["collected"] > 0
    assert "TORCH_CUDA_ARCH_LIST=" in steps["build"]["command"] and "device=cuda" in steps["sid-digits"]["command"]
    md = (details / "summary.md").read_text()
    for name in STEPS:
        assert f"| {name} | " in md
    assert "dry mode: --dry given" in md


def test_out_dir_must_be_new_or_empty(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    proc = _run_script("--dry", tmp_path)
    assert proc.returncode == 2 and "not an empty directory" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_failed_build_skips_the_steps_that_need_it(tmp_path, monkeypatch):
    """GPU mode (a pretend GPU): the build fails, the imports still run, the rest say why they skipped."""
    def broken_build(c, step, skip):
        step.command = "the build"
        run = c.run(step, [sys.executable, "-c", "import sys; sys.exit('nvcc: no such architecture')"], c.env())
        step.status, step.reason = "fail", gc._failure(run, "the build")

    monkeypatch.setattr(gc, "probe", lambda out: {"cuda_available": True, "gpus": [{"name": "H200", "capability": "9.0"}],
                                                  "packages": {}})
    monkeypatch.setitem(gc.RUNNERS, "build", broken_build)
    assert gc.main([str(tmp_path / "out")]) == 1
    summary = json.loads((tmp_path / "out" / gc.RESULTS).read_text())
    assert summary["mode"] == "gpu" and summary["failed_steps"] == ["build"] and summary["budget_s"] == gc.BUDGET_S
    steps = {s["name"]: s for s in summary["steps"]}
    assert "nvcc: no such architecture" in steps["build"]["reason"]
    assert steps["imports"]["status"] == "pass"
    for name in gc.NEEDS_BUILD:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"] == "needs the build, which failed"
        assert steps[name]["command"] and steps[name]["seconds"] == 0
    assert "eval_data=none" in steps["sid-digits"]["command"]  # no torch-fidelity: no FID tracking
    assert "**FAIL**" in (_details(tmp_path / "out", tmp_path / "details") / "summary.md").read_text()
    lines = (tmp_path / "out" / gc.SUMMARY).read_text().splitlines()
    assert lines[0].startswith("fastdistill GPU check: FAIL") and lines[1].startswith("FAIL    build")
    assert "nvcc: no such architecture" in lines[1] and "[needs the build, which failed]" in lines[3]


def test_an_error_of_the_script_fails_only_its_step(tmp_path, monkeypatch):
    def broken_parser(c, step, skip):
        raise ValueError("unexpected benchmark output")

    monkeypatch.setitem(gc.RUNNERS, "loss-benchmarks", broken_parser)
    (tmp_path / "logs").mkdir()
    c = gc.Check(tmp_path, "--dry given", time.monotonic(), 300, {})
    step = gc.run_step(c, "loss-benchmarks", None)
    assert step.status == "fail" and "ValueError: unexpected benchmark output" in step.reason
    assert "Traceback" in (tmp_path / step.log).read_text()


def test_a_command_past_its_limit_is_stopped(tmp_path):
    """SIGINT GRACE_S before the step's limit: the command's own handler gets to finish."""
    (tmp_path / "logs").mkdir()
    c = gc.Check(tmp_path, None, time.monotonic(), 300, {})
    step = gc.Step("imports", limit_s=gc.GRACE_S + 1)
    code = "import signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(130))\ntime.sleep(60)"
    run = c.run(step, [sys.executable, "-c", code], c.env())
    assert run.timed_out and run.rc == 130 and run.seconds < 10
    assert step.seconds == run.seconds
    assert "[exit status 130" in (tmp_path / "logs" / "imports.log").read_text()


@pytest.mark.parametrize("line, counts", [
    ("===== 90 passed, 3 skipped, 904 deselected in 50.12s =====", {"passed": 90, "skipped": 3, "deselected": 904}),
    ("1 failed, 2 passed, 1 error in 3.0s", {"failed": 1, "passed": 2, "errors": 1}),
    ("93/997 tests collected (904 deselected) in 4.79s", {"collected": 93, "deselected": 904}),
    ("78 tests collected in 2.8s", {"collected": 78}),
    ("=== no tests ran in 0.01s ===", {}),
])
def test_pytest_counts(line, counts):
    assert gc.pytest_counts(f"collecting ...\ntests/x.py::t PASSED [100%]\n{line}\n") == counts


def test_pytest_outcomes_and_summary_section():
    text = "\n".join([
        "=========================== short test summary info ============================",
        "SKIPPED [2] tests/test_a.py:10: needs a CUDA device",
        "FAILED tests/test_b.py::test_x[cuda] - AssertionError: boom",
        "=============== fastdistill loss benchmarks: fused vs reference ===============",
        "op   dev     B",
        "sid  cuda  256",
        "",
        "---- benchmark 'sid': 2 tests ----",
    ])
    assert gc.pytest_outcomes(text) == {"failed_tests": ["tests/test_b.py::test_x[cuda]"],
                                        "skip_reasons": ["needs a CUDA device"]}
    assert gc.summary_section(text, "fastdistill loss benchmarks") == "op   dev     B\nsid  cuda  256"
    assert gc.summary_section(text, "no such section") == ""


def _bench(params, median, **info):
    return {"params": params, "stats": {"median": median}, "extra_info": info}


def test_benchmark_rows():
    case = {"device": "cuda", "batch": 256, "shape": [3, 64, 64], "op": "sid"}
    loss = {"benchmarks": [_bench({"device": "cuda", "batch": 256, "shape": [3, 64, 64]}, 1e-4),
                           _bench({**case, "provider": "eager"}, 4e-3),
                           _bench({**case, "provider": "compiled"}, 1e-3),
                           _bench({**case, "provider": "cuda"}, 5e-4, **{"GB/s": 1000.0, "fraction_of_copy_bw": 0.8})]}
    (row,) = gc.loss_benchmark_rows(loss)
    assert row["provider"] == "cuda" and row["shape"] == "3x64x64"
    assert row["vs_eager"] == pytest.approx(8.0) and row["vs_compiled"] == pytest.approx(2.0)
    assert row["fraction_of_copy_bw"] == 0.8 and row["peak_vs_eager"] is None
    iteration = {"benchmarks": [_bench({"dtype": "bf16"}, 0.0, matmul=1.0),
                                _bench({}, 0.5, images_per_s=128.0, arch="ddpmpp", method="sid", row="engine bf16",
                                       speedup_vs_eager=1.5, peak_bytes=2**30)]}
    assert gc.iteration_benchmark_rows(iteration) == [{"arch": "ddpmpp", "method": "sid", "row": "engine bf16",
                                                       "images_per_s": 128.0, "speedup_vs_eager": 1.5, "peak_mib": 1024.0}]


def test_sid_results(tmp_path):
    rows = [{"step": 0, "fid_initial": 1.7, "fid_data_vs_data": 0.3, "fid_teacher_heun35": 0.16},
            {"step": 50, "img_per_s": 100.0, "mfu": 0.01}, {"step": 100, "img_per_s": 900.0, "mfu": 0.2},
            {"step": 150, "img_per_s": 1000.0, "mfu": 0.22, "fid_student": 0.4}, {"step": 200, "img_per_s": 950.0, "mfu": 0.21}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = gc.sid_results("fastdistill: stopped at step 213; ...\ndistilled 213 steps (6.8 kimg) in 118 s\n", path)
    assert out == {"steps": 213, "img_per_s_median": 950.0, "mfu_median": 0.21, "fid_initial": 1.7, "fid_data_vs_data": 0.3,
                   "fid_teacher_heun35": 0.16, "fid": 0.4, "fid_step": 150}
    assert gc.sid_results("", tmp_path / "missing.jsonl") == {"steps": 0}


@pytest.mark.parametrize("budget", [gc.BUDGET_S, gc.MIN_BUDGET_S, 600])
def test_step_limits_fit_the_budget(budget):
    """Every step's limit, the SiD run's minimum and the time kept for the summaries fit --budget,
    whatever it is set to: a check cannot fail on time because its own limits overrun it."""
    limits = gc.planned_limits(budget)
    assert list(limits) == list(gc.STEPS)
    assert sum(limits.values()) + gc.FINISH_S <= budget, limits
    assert all(v > gc.GRACE_S for v in limits.values()), limits
    assert gc.planned_limits(2 * budget)["gpu-tests"] == 2 * limits["gpu-tests"]  # --budget raises them


def test_a_budget_too_short_for_the_steps_is_refused(tmp_path):
    proc = _run_script("--budget", "100", tmp_path / "out")
    assert proc.returncode == 2 and "--budget 100: at least" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_rerun_reuses_the_build_until_a_source_torch_or_architecture_changes(tmp_path, monkeypatch):
    """The stamp in build/gpu_check/ records what the build depends on: a rerun with the same ones
    only loads the extension (it fits 3 minutes); any change builds afresh."""
    monkeypatch.setattr(gc, "BUILD_DIR", tmp_path / "build")
    monkeypatch.setattr(gc, "BUILD_STAMP", tmp_path / "build" / "stamp.json")
    commands = []

    def run(step, argv, env):
        commands.append("setup.py" if "setup.py" in argv else "verify")
        return gc.Run(0, 0.1, False, 'BUILD {"cuda_kernels": true}')

    probe = {"cuda_available": True, "gpus": [{"name": "H100", "capability": "9.0"}], "torch": "2.11.0", "cpus": 16}
    (tmp_path / "logs").mkdir()
    c = gc.Check(tmp_path, None, time.monotonic(), gc.BUDGET_S, probe)
    monkeypatch.setattr(c, "run", run)

    def check():
        commands.clear()
        step = gc.Step("build", limit_s=60)
        gc.build(c, step, None)
        assert step.status == "pass", step.reason
        return commands[:], step

    assert check()[0] == ["setup.py", "verify"]  # the first check builds
    assert json.loads(gc.BUILD_STAMP.read_text()) == gc.build_stamp(probe, "9.0")
    done, step = check()
    assert done == ["verify"] and step.results["reused"] and "reused the build" in step.reason
    c.probe = {**probe, "torch": "2.12.0"}  # another torch: built again
    assert check()[0] == ["setup.py", "verify"]
    assert gc.build_stamp(probe, "9.0") != gc.build_stamp(probe, "10.0")
