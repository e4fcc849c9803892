"""MetricsLogger: metrics.jsonl as before, TensorBoard event files, Weights & Biases runs.

TensorBoard and wandb are optional extras: the tests that need them skip when absent, and the
missing-package errors are checked by hiding the package in sys.modules. A fake ``wandb``
module checks the exact init/log/finish calls without the real package.
"""
import json
import math
import re
import sys
import types

import pytest

from fastdistill.engine.monitor import MetricsLogger

ROWS = [
    dict(step=0, kimg=0.0, sw_initial=0.5),
    dict(step=10, kimg=0.64, loss_gen=1.25, loss_fake=0.75, skipped=0, flag=True, method="dmd"),
    dict(step=20, kimg=1.28, loss_gen=float("nan"), loss_fake=0.5, skipped=1),
]


def _log_all(log):
    for row in ROWS:
        log.log(**row)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_rows_as_before(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        _log_all(log)
        log.log(step=30, time=123.0)
    rows = _read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 4
    for got, want in zip(rows, ROWS):
        assert isinstance(got.pop("time"), float)
        want = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in want.items()}
        assert got == want  # non-finite -> null, everything else verbatim
    assert rows[3] == {"step": 30, "time": 123.0}  # a given "time" is kept
    with MetricsLogger(tmp_path, tensorboard=False) as log:  # a resumed run appends
        log.log(step=40)
    assert len(_read_jsonl(tmp_path / "metrics.jsonl")) == 5
    assert not (tmp_path / "tensorboard").exists()


def test_close_is_idempotent(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.close()
    log.close()
    log.log(step=1, loss=1.0)  # after close: ignored, not an error
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_tensorboard_scalars_at_their_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard="auto") as log:
        _log_all(log)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"kimg", "sw_initial", "loss_gen", "loss_fake", "skipped"}
    scal = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scal["kimg"] == [(0, 0.0), (10, pytest.approx(0.64)), (20, pytest.approx(1.28))]
    assert scal["sw_initial"] == [(0, 0.5)]
    assert scal["loss_fake"] == [(10, 0.75), (20, 0.5)]
    assert scal["skipped"] == [(10, 0.0), (20, 1.0)]
    (s1, v1), (s2, v2) = scal["loss_gen"]
    assert (s1, v1, s2) == (10, 1.25, 20) and math.isnan(v2)  # a NaN loss stays visible


def test_tensorboard_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    with pytest.raises(ImportError, match=re.escape("tensorboard=True needs the tensorboard package: pip install tensorboard")):
        MetricsLogger(tmp_path / "run", tensorboard=True)
    assert not (tmp_path / "run").exists()  # failed before creating anything
    with MetricsLogger(tmp_path / "run", tensorboard="auto") as log:  # "auto": silently off
        _log_all(log)
    assert len(_read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 3
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_argument_checked(tmp_path):
    with pytest.raises(ValueError):
        MetricsLogger(tmp_path, tensorboard="yes")


def test_wandb_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=re.escape("log.wandb=true needs wandb: pip install wandb")):
        MetricsLogger(tmp_path / "run", wandb=True)
    assert not (tmp_path / "run").exists()


def test_wandb_calls(tmp_path, monkeypatch):
    """init's arguments, numeric-only rows at row["step"], finish once on close (fake module)."""
    calls = []

    class Run:
        def log(self, data, step=None):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = MetricsLogger(tmp_path, tensorboard=False, wandb=True, wandb_project="proj", run_name="r1", config={"lr": 1e-4})
    _log_all(log)
    log.close()
    log.close()
    assert calls[0] == ("init", dict(project="proj", name="r1", config={"lr": 1e-4}, dir=str(tmp_path)))
    assert calls[1] == ("log", dict(kimg=0.0, sw_initial=0.5), 0)
    assert calls[2] == ("log", dict(kimg=0.64, loss_gen=1.25, loss_fake=0.75, skipped=0), 10)  # no bool, no str
    assert calls[3][0] == "log" and calls[3][2] == 20 and math.isnan(calls[3][1]["loss_gen"])
    assert calls[4:] == [("finish",)]


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # keep ~ untouched
        monkeypatch.setenv(var, str(tmp_path / "home" / var))
    with MetricsLogger(tmp_path, tensorboard=False, wandb=True, run_name="offline-test", config={"lr": 1e-4}) as log:
        _log_all(log)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # The run's records (history included) live in run-<id>.wandb, a binary log that wandb
    # ships no reader for; the logged keys and values appear in it as protobuf strings.
    (data,) = runs[0].glob("run-*.wandb")
    blob = data.read_bytes()
    assert blob.startswith(b":W&B")
    for token in (b"loss_gen", b"loss_fake", b"sw_initial", b"1.25", b"0.75", b"_step"):
        assert token in blob
    assert b"flag" not in blob and b"dmd" not in blob  # non-numeric values are not logged


def test_disabled_writes_nothing(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path / "run", enabled=False, tensorboard="auto", wandb=True) as log:
        _log_all(log)
    assert not (tmp_path / "run").exists()
    assert calls == []


# ---------------------------------------------------------------------- wired into a run
def test_a_run_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastdistill.engine import run_distillation
    from tests._engine_helpers import tiny_config, tiny_teacher

    run_distillation(tiny_config(tmp_path, steps=3, **{"log.tensorboard": "true"}), teacher=tiny_teacher(0))
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss_gen")] == [1, 2, 3]


def test_requested_trackers_must_be_installed(monkeypatch):
    import importlib.util

    from fastdistill.engine import ConfigError, DistillConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "tensorboard") else real(name, *a))
    with pytest.raises(ConfigError, match="log.wandb=true needs the wandb package"):
        DistillConfig().with_overrides(["log.wandb=true"]).validate()
    with pytest.raises(ConfigError, match="log.tensorboard=true needs the tensorboard package"):
        DistillConfig().with_overrides(["log.tensorboard=true"]).validate()
    DistillConfig().with_overrides(["log.tensorboard=auto"]).validate()  # auto: silently off without it
