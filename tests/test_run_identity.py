"""A run is never lost or mixed up with another: resume continues only the same run, resume=none
never overwrites one, one process at a time writes into a run directory, and SIGTERM / SIGUSR1
checkpoint like Ctrl-C. Each test fails on commit e856a07 (before these checks existed)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastdistill.cli import main
from fastdistill.engine import ConfigError, Distiller
from fastdistill.engine import checkpoint as ckpt
from fastdistill.engine.identity import LOCK_FILE, RunLockedError
from tests._engine_helpers import live_run, tiny_config, tiny_teacher

REPO = Path(__file__).resolve().parents[1]
OVER = {"threads": 1, "steps": 4, "ckpt_every": 2, "optim.lr": 1e-2}

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(out, teacher=None, **over):
    return Distiller(tiny_config(out, **{**OVER, **over}), teacher=teacher or tiny_teacher(0)).run()


def _steps(out):
    return [p.name for p in ckpt.list_checkpoints(out)]


def test_resume_none_never_overwrites_a_run(tmp_path):
    _run(tmp_path)
    before = _steps(tmp_path)
    with pytest.raises(ConfigError, match="already holds checkpoints.*resume=auto.*another out_dir"):
        _run(tmp_path, resume="none", steps=2)
    assert _steps(tmp_path) == before == ["step-00000002", "step-00000004"]


def test_resume_continues_only_the_same_run(tmp_path, capsys):
    _run(tmp_path)
    with pytest.raises(ConfigError, match="different run.*teacher_sha256"):
        _run(tmp_path, teacher=tiny_teacher(1), resume="auto", steps=6)
    with pytest.raises(ConfigError, match="different run.*method.name: 'sid' -> 'dmd'"):
        _run(tmp_path, resume="auto", steps=6, **{"method.name": "dmd"})
    with pytest.raises(ConfigError, match="different run.*seed: 0 -> 7"):
        _run(tmp_path, resume="auto", steps=6, seed=7)
    # another architecture is another run (not a raw load_state_dict size-mismatch traceback)
    with pytest.raises(ConfigError, match="different run.*architecture.*shapes_sha256"):
        Distiller(tiny_config(tmp_path, **{**OVER, "resume": "auto", "steps": 6}), teacher=tiny_teacher(0),
                  init_network=tiny_teacher(0, hidden=48))
    assert _steps(tmp_path) == ["step-00000002", "step-00000004"]  # nothing was written by the refused runs
    capsys.readouterr()
    r = _run(tmp_path, resume="auto", steps=6, log_every=3, eval_every=3)  # free settings may change
    assert r.step == 6 and "resuming from step 4 of" in capsys.readouterr().out


def test_changed_settings_need_the_flag_and_are_recorded(tmp_path):
    _run(tmp_path)
    with pytest.raises(ConfigError, match=r"changed settings \(optim.lr: 0.01 -> 0.001\).*allow_config_change=true"):
        _run(tmp_path, resume="auto", steps=6, **{"optim.lr": 1e-3})
    r = _run(tmp_path, resume="auto", steps=6, allow_config_change=True, **{"optim.lr": 1e-3})
    assert r.step == 6
    state = json.loads((Path(r.checkpoint) / ckpt.STATE_FILE).read_text())
    assert state["config_changes"] == [{"step": 4, "changes": {"optim.lr": [0.01, 0.001]}}]


def test_settings_added_since_a_checkpoint_count_as_their_defaults(tmp_path):
    """A checkpoint written before a setting existed resumes without the flag while the setting is
    at its default, and is refused when it is not."""
    _run(tmp_path)
    latest = ckpt.latest_checkpoint(tmp_path)
    state = json.loads((latest / ckpt.STATE_FILE).read_text())
    del state["config"]["optim"]["fake_steps"], state["config"]["method"]["guidance_teacher"]
    del state[ckpt.CHECKSUMS_KEY]  # as written before checkpoints had checksums
    (latest / ckpt.STATE_FILE).write_text(json.dumps(state))
    (latest / ckpt.CHECKSUMS_FILE).unlink()
    with pytest.raises(ConfigError, match=r"changed settings \(optim.fake_steps: 1 -> 2\)"):
        _run(tmp_path, resume="auto", steps=6, **{"optim.fake_steps": 2})
    assert _run(tmp_path, resume="auto", steps=6).step == 6


def test_checkpoints_without_identity_resume_with_a_warning(tmp_path, capsys):
    _run(tmp_path)
    latest = ckpt.latest_checkpoint(tmp_path)
    state = json.loads((latest / ckpt.STATE_FILE).read_text())
    del state["identity"], state[ckpt.CHECKSUMS_KEY]
    (latest / ckpt.STATE_FILE).write_text(json.dumps(state))
    (latest / ckpt.CHECKSUMS_FILE).unlink()  # as written before checkpoints had either
    assert _run(tmp_path, resume="auto", steps=6).step == 6
    assert "records no run identity" in capsys.readouterr().out


# ---------------------------------------------------------------------- the lock
def test_a_live_run_directory_is_locked(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / LOCK_FILE
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}))
        with pytest.raises(RunLockedError, match=f"in use by process {sleeper.pid} on this host"):
            _run(tmp_path)
        assert not (tmp_path / "checkpoints").exists() or not _steps(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    capsys.readouterr()
    assert _run(tmp_path).step == 4  # the process is gone: its lock is taken over
    assert f"taking over the lock of process {sleeper.pid}" in capsys.readouterr().out
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end of the run
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(RunLockedError, match="host elsewhere.*force=true"):
        _run(other)
    assert _run(other, force=True).step == 4


def test_two_processes_cannot_write_into_one_run(tmp_path):
    with live_run(tmp_path) as proc:
        with pytest.raises(RunLockedError, match=f"process {proc.pid}"):
            _run(tmp_path, resume="auto")


# ---------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_checkpoint_and_resume_exactly(tmp_path, sig):
    full = _run(tmp_path / "full", steps=6)

    def send_at_3(dist, row):
        if dist.step == 3:
            os.kill(os.getpid(), sig)

    r = Distiller(tiny_config(tmp_path / "cut", **{**OVER, "steps": 6}), teacher=tiny_teacher(0), callback=send_at_3).run()
    assert r.interrupted and r.step == 3 and r.stop_signal == sig
    assert _steps(tmp_path / "cut")[-1] == "step-00000003"
    resumed = _run(tmp_path / "cut", resume="auto", steps=6)
    a, _ = ckpt.load_checkpoint(full.checkpoint)
    b, _ = ckpt.load_checkpoint(resumed.checkpoint)
    for net in ("generator", "fake", "ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)


def test_sigterm_exit_code_of_the_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "fastdistill.cli", "distill", "--preset", "toy", "teacher.fit_steps=5",
           "steps=1000000", "eval_every=0", "eval_samples=64", "progress=false", "ckpt_every=0", "log_every=20",
           f"out_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ((tmp_path / "metrics.jsonl").is_file() and (tmp_path / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM received; checkpointing" in out and _steps(tmp_path), out
    assert main(["sample", str(tmp_path), "-n", "4"]) == 0  # the checkpoint it wrote is usable


def test_force_flag_of_the_command(tmp_path, capsys):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    args = ["distill", "--preset", "toy", "teacher.fit_steps=5", "steps=2", "eval_every=0", "eval_samples=64",
            "progress=false", f"out_dir={tmp_path}"]
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0 and _steps(tmp_path) == ["step-00000002"]


def test_the_summary_keeps_the_initial_generator_after_a_resume(tmp_path):
    from fastdistill.engine import format_summary

    over = {"teacher.kind": "analytic", "teacher.init": "fit", "teacher.fit_steps": 5, "eval_samples": 64,
            "eval_every": 0}
    first = Distiller(tiny_config(tmp_path, **{**OVER, **over}), teacher=None).run()
    resumed = Distiller(tiny_config(tmp_path, **{**OVER, **over, "resume": "auto", "steps": 6}), teacher=None).run()
    assert resumed.quality.initial == first.quality.initial is not None
    assert "generator before distillation" in format_summary(resumed)


def test_a_run_that_fails_before_training_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="unknown analytic teacher"):
        Distiller(tiny_config(out, **{**OVER, "teacher.kind": "analytic", "teacher.name": "nope"}), teacher=None)
    assert not out.exists()
    kept = tmp_path / "kept"
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="unknown analytic teacher"):
        Distiller(tiny_config(kept, **{**OVER, "teacher.kind": "analytic", "teacher.name": "nope"}), teacher=None)
    assert (kept / "notes.txt").read_text() == "mine" and not (kept / "checkpoints").exists()
