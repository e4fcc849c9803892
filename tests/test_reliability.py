"""Reliability round 3 (issue 35), the engine's and the losses' items: a checkpoint folder that
runs code when loaded, a refused second launch that deletes the live run's in-flight checkpoint, a
run lock two processes can hold, checkpoints renamed, pruned or stripped of their checksums, loss
backends that disagree in corners, a user's files in out_dir, and the configuration and disk
errors that ended in tracebacks (test_t2i_inputs has the text-to-image inputs). Each test failed
on the code before its fix."""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from fastdistill.engine import Distiller
from fastdistill.engine import checkpoint as ckpt
from fastdistill.engine.identity import LOCK_FILE, RunLock, RunLockedError
from fastdistill.engine.outputs import StudentOutputs
from fastdistill.engine.shards import SHARDS_DIR, load_shards, read_shards
from fastdistill.student import load_student
from tests._engine_helpers import live_run, tiny_config, tiny_teacher


pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    Distiller(tiny_config(out, steps=2, ckpt_every=2), teacher=tiny_teacher(0)).run()
    return out


def _rewrite_checksums(path: Path) -> None:
    """What an attacker who controls the folder does: list every file, with its true checksum."""
    sums = {p.relative_to(path).as_posix(): {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ckpt.CHECKSUMS_FILE}
    (path / ckpt.CHECKSUMS_FILE).write_text(json.dumps({"format": ckpt.CHECKSUMS_FORMAT, "files": sums}))


def test_a_planted_shard_metadata_is_refused_and_never_unpickled(whole_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    newest = ckpt.latest_checkpoint(run)
    marker = tmp_path / "pwned"
    (newest / SHARDS_DIR).mkdir()
    (newest / SHARDS_DIR / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    # unlisted: the checkpoint fails verification (and is skipped for the older one, which is intact)
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"shards/.metadata is not listed in checksums.json"):
        ckpt.verify_checkpoint(newest)
    with pytest.raises(ckpt.CheckpointCorruptError, match="not listed"):
        load_student(newest, network=tiny_teacher(0))
    assert not marker.exists()
    # listed too, but state.json says whole: the shards are never read
    _rewrite_checksums(newest)
    load_student(newest, network=tiny_teacher(0))
    assert not marker.exists()
    # and where state.json claims shards, the metadata goes through the restricted reader
    state = json.loads((newest / ckpt.STATE_FILE).read_text())
    (newest / ckpt.STATE_FILE).write_text(json.dumps({**state, "layout": "sharded"}))
    _rewrite_checksums(newest)
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"shards/.metadata is refused.*builtins.exec"):
        load_student(newest, network=tiny_teacher(0))
    assert not marker.exists()


def test_shard_entries_are_read_as_weights_only(tmp_path):
    """DCP's own format round-trips through the restricted reader; a non-tensor entry that runs code does not."""
    shards = tmp_path / "ck" / SHARDS_DIR
    want = {"ema.w": torch.randn(3, 4), "ema.b": torch.randn(4).bfloat16(), "optim.lr": 0.01, "optim.betas": (0.9, 0.99)}
    dcp.save(dict(want), checkpoint_id=shards, no_dist=True)
    got = {"ema.w": torch.zeros(3, 4), "ema.b": torch.zeros(4, dtype=torch.bfloat16), "optim.lr": None,
           "optim.betas": None}
    load_shards(got, tmp_path / "ck", no_dist=True)
    assert torch.equal(got["ema.w"], want["ema.w"]) and torch.equal(got["ema.b"], want["ema.b"])
    assert got["optim.lr"] == 0.01 and tuple(got["optim.betas"]) == (0.9, 0.99)
    assert set(read_shards(tmp_path / "ck", "ema")) == {"w", "b"}

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil" / SHARDS_DIR
    dcp.save({"ema.w": torch.zeros(2), "optim.lr": _Payload(marker)}, checkpoint_id=evil, no_dist=True)
    with pytest.raises(ckpt.CheckpointCorruptError, match="is refused"):
        load_shards({"ema.w": torch.zeros(2), "optim.lr": None}, tmp_path / "evil", no_dist=True)
    assert not marker.exists()


def test_a_refused_second_launch_touches_nothing_of_the_live_run(tmp_path):
    with live_run(tmp_path) as proc:
        in_flight = ckpt.ckpt_root(tmp_path) / f".tmp-step-00000042-{proc.pid}"  # the live run's write under way
        in_flight.mkdir(parents=True)
        (in_flight / "generator.safetensors").write_bytes(b"half written")
        with pytest.raises(RunLockedError, match=f"process {proc.pid}"):
            Distiller(tiny_config(tmp_path, resume="auto"), teacher=tiny_teacher(0))
        assert (in_flight / "generator.safetensors").read_bytes() == b"half written"
        assert proc.poll() is None


def _contend(out: str, start: float, log: str) -> None:
    """One contender: take the lock at ``start``, hold it briefly, record the interval it held it."""
    time.sleep(max(0.0, start - time.time()))
    lock = RunLock(out, log=lambda msg: None)
    try:
        lock.acquire()
    except RunLockedError:
        return
    t0 = time.monotonic()
    time.sleep(0.05)
    t1 = time.monotonic()
    lock.release()
    with open(log, "a") as f:
        f.write(f"{t0} {t1}\n")


TRIALS = 12  # the lock before flock was shared in about 24 of 25 such trials


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="forks the contenders")
@pytest.mark.parametrize("stale", [False, True], ids=["fresh-folder", "over-a-stale-lock"])
def test_the_run_lock_is_never_held_by_two_processes(tmp_path, stale):
    ctx = mp.get_context("fork")
    overlaps, holders = 0, 0
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        out.mkdir()
        if stale:  # left by a process that is gone
            (out / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename,
                                                     "started": "then"}))
        log = tmp_path / f"t{trial}.log"
        start = time.time() + 0.1
        procs = [ctx.Process(target=_contend, args=(str(out), start, str(log))) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines()) if log.exists() else []
        holders += len(spans)
        overlaps += sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert holders >= TRIALS  # someone took it every time
    assert overlaps == 0, f"two processes held the lock at once in {overlaps} of {TRIALS} trials"


def test_a_lock_naming_no_owner_is_taken_over_not_waited_for(tmp_path):
    for content in ("", "[1, 2]", json.dumps({"pid": 0, "host": os.uname().nodename}), json.dumps({"host": "x"}),
                    json.dumps({"pid": 10**30, "host": os.uname().nodename})):
        (tmp_path / LOCK_FILE).write_text(content)
        lock = RunLock(tmp_path, log=lambda msg: None)
        lock.acquire()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        lock.release()
        assert not (tmp_path / LOCK_FILE).exists()


def test_a_checkpoint_renamed_to_another_step_is_skipped_not_resumed(whole_run, tmp_path, capsys):
    """Item 11: a folder renamed to a higher step is refused by name, and the run resumes from the
    newest checkpoint whose state matches its name."""
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    newest = ckpt.latest_checkpoint(run)
    renamed = newest.parent / "step-00000099"
    shutil.copytree(newest, renamed)
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"records step 2, but the folder is named step-00000099"):
        ckpt.verify_checkpoint(renamed)
    assert ckpt.latest_verified_checkpoint(run) == newest
    assert "skipped checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_a_non_positive_divisor_is_refused_by_every_backend(backend, bad):
    """Item 13: a zero or negative divisor entry (a user's own tensor) is an error, not a silent
    division by zero or a flipped gradient; a non-finite entry still drops its sample."""
    from fastdistill.losses import dmd_loss, sid_loss
    from tests.test_losses import use_backend

    use_backend(backend)
    y, y_real, y_fake = (torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(k)) for k in range(3))
    for loss in (sid_loss, dmd_loss):
        with pytest.raises(ValueError, match="divisor must be positive"):
            loss(y, y_real, y_fake, divisor=torch.tensor([1.0, bad, 2.0]), backend=backend)
        out = loss(y, y_real, y_fake, divisor=torch.tensor([1.0, float("nan"), 2.0]), backend=backend, reduction="none")
        assert out[1] == 0 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_dmd_loss_has_no_graph_when_only_a_teacher_output_requires_grad(backend):
    """Item 13: DMD's loss has no gradient for y_real or y_fake, so with y constant no backend
    returns a graph (a fused op used to hand back one whose backward gave zeros)."""
    from fastdistill.losses import dmd_loss
    from tests.test_losses import use_backend

    use_backend(backend)
    y, y_real, y_fake = (torch.randn(2, 8, generator=torch.Generator().manual_seed(k)) for k in range(3))
    for grads in ((True, False), (False, True)):
        real, fake = (t.clone().requires_grad_(g) for t, g in zip((y_real, y_fake), grads))
        for name in ("reference", backend):
            assert dmd_loss(y, real, fake, backend=name).grad_fn is None, name


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_the_loss_backends_agree_on_huge_finite_inputs(backend):
    """Item 13: at |y| = 1e18 DMD's loss is 0.5 |g|^2 in every backend (the literal reference form
    cancelled to 0); at 1e37, where the sums overflow fp32, every backend says so with a non-finite
    value rather than the reference calling it 0."""
    from fastdistill.losses import dmd_loss, sid_loss, sim_loss
    from tests.test_losses import use_backend

    use_backend(backend)
    for magnitude, finite in ((1e18, True), (1e37, False)):
        y = torch.full((2, 8), magnitude)
        y[:, 0] *= -1
        y_real, y_fake = 0.5 * torch.full_like(y, magnitude), -0.3 * torch.full_like(y, magnitude)
        for loss in (sid_loss, sim_loss, dmd_loss):
            values = [loss(y, y_real, y_fake, backend=name, reduction="none") for name in ("reference", backend)]
            assert all(bool(torch.isfinite(v).all()) == finite for v in values), (loss.__name__, magnitude, values)
            if finite:
                torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=0)
        if finite:
            g = (y_fake - y_real) / (y - y_real).abs().mean(dim=1, keepdim=True)
            torch.testing.assert_close(dmd_loss(y, y_real, y_fake, backend="reference", reduction="none"),
                                       0.5 * (g * g).sum(dim=1), rtol=1e-5, atol=0)

def test_a_metrics_file_that_is_a_symlink_is_refused_not_followed(tmp_path):
    """Item 14: metrics.jsonl planted as a link in out_dir is never appended to (its target is untouched)."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(target)
    with pytest.raises(PermissionError, match="metrics.jsonl is a symbolic link"):
        Distiller(tiny_config(out, steps=1), teacher=tiny_teacher(0)).run()
    assert target.read_text() == "precious\n"
    assert not (out / LOCK_FILE).exists()  # the refused run let go of the folder


def test_a_checkpoint_pruned_while_it_is_read_is_not_called_corrupt(tmp_path, monkeypatch, capsys):
    """Item 7: reading a live run (keep_last=1) whose only checkpoint is renamed away by pruning,
    right after it wrote a newer one, finds the newer one instead of calling the old one corrupt."""
    run = tmp_path / "run"
    Distiller(tiny_config(run, steps=4, ckpt_every=2, keep_last=3), teacher=tiny_teacher(0)).run()
    newer = ckpt.ckpt_root(run) / "step-00000004"
    aside = tmp_path / "aside"
    shutil.move(newer, aside)
    old = ckpt.ckpt_root(run) / "step-00000002"
    real_sum, pruned = ckpt._file_sum, []

    def live_run_prunes(path):
        if not pruned and old in path.parents:  # the live run writes step 4 and prunes step 2 meanwhile
            shutil.move(aside, newer)
            old.rename(old.with_name(f".tmp-prune-step-00000002-{os.getpid()}"))
            pruned.append(True)
        return real_sum(path)

    monkeypatch.setattr(ckpt, "_file_sum", live_run_prunes)
    assert ckpt.latest_verified_checkpoint(run) == newer
    assert pruned and "skipped" not in capsys.readouterr().err


def test_deleting_checksums_does_not_turn_verification_off(whole_run, tmp_path, monkeypatch, capsys):
    """Item 8: a checkpoint written with checksums and missing them is refused (the run falls back
    to an intact one); the documented override loads it unverified, with the warning."""
    run = tmp_path / "run"
    Distiller(tiny_config(run, steps=4, ckpt_every=2, keep_last=3), teacher=tiny_teacher(0)).run()
    newest = ckpt.latest_checkpoint(run)
    (newest / ckpt.CHECKSUMS_FILE).unlink()
    with pytest.raises(ckpt.CheckpointCorruptError, match="checksums.json is missing, though this checkpoint was "
                                                          "written with one.*FASTDISTILL_ALLOW_UNVERIFIED=1"):
        ckpt.verify_checkpoint(newest)
    assert ckpt.latest_verified_checkpoint(run) == ckpt.ckpt_root(run) / "step-00000002"
    monkeypatch.setenv(ckpt.ALLOW_UNVERIFIED_ENV, "1")
    assert ckpt.verify_checkpoint(newest) is False  # loaded unverified, said once
    assert "cannot be verified" in capsys.readouterr().err


def test_a_fresh_run_refuses_a_folder_of_someone_elses_files(tmp_path, capsys):
    """Item 12: a user's config.json and samples.png in out_dir are not replaced: the launch is one
    line, rc 2. A user's other files stay beside a run (test_run_identity), and a folder a run
    already holds is taken as before."""
    from fastdistill.cli import main
    from tests.test_cli_errors import TINY, _one_line_error

    out = tmp_path / "mine"
    out.mkdir()
    mine = {"config.json": '{"my": "settings"}', "samples.png": "my picture"}
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(["distill", "--preset", "toy", *TINY, f"out_dir={out}"]) == 2
    assert "would replace (config.json, samples.png)" in _one_line_error(capsys, "distill")
    assert {p.name: p.read_text() for p in out.iterdir()} == mine

    run = tmp_path / "run"
    Distiller(tiny_config(run, steps=2, ckpt_every=2), teacher=tiny_teacher(0)).run()
    Distiller(tiny_config(run, steps=4, ckpt_every=2, resume="auto"), teacher=tiny_teacher(0)).run()
    assert ckpt.latest_checkpoint(run).name == "step-00000004"


def test_the_fsdp_refusals_advice_turns_evaluation_off_for_vector_data(tmp_path):
    """Item 6: ``eval_data=none``, the advice of the refusal below, now turns the sliced-Wasserstein
    evaluation of vector data off too (it used to keep it, so the sharded run stayed refused)."""
    from fastdistill.engine.config import preset_config
    from fastdistill.engine.evaluator import LoopEvaluator
    from fastdistill.teachers import load_teacher
    from fastdistill.teachers.loading import ANALYTIC_PREFIX
    from fastdistill.teachers.traits import traits

    cfg = preset_config("toy")
    teacher = load_teacher(ANALYTIC_PREFIX + cfg.teacher.name)
    assert LoopEvaluator.for_run(cfg, teacher, traits(teacher)) is not None
    assert LoopEvaluator.for_run(cfg.with_overrides(["eval_data=none"]), teacher, traits(teacher)) is None
    over = ["eval_data=none", "steps=2", "batch_size=16", "teacher.fit_steps=5", "progress=false", "threads=1",
            f"out_dir={tmp_path / 'run'}", "log.tensorboard=false"]
    result = Distiller(preset_config("toy").with_overrides(over)).run()
    assert result.step == 2 and result.quality is None


@pytest.fixture()
def deep_config(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    return path


#: item 9 and 10's configuration cases: (overrides, what the one line says)
CONFIG_CASES = {
    "seed 1e23": (["seed=1e23"], "seed must be an integer within"),
    "deep override": (["seed=" + "[" * 200_000 + "]" * 200_000], "nested too deeply"),
    "threads past the cores": (["threads=100000"], "CPU cores"),
    "enormous batch": (["batch_size=100000000000"], "out of memory"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_config_that_broke_deep_inside_is_one_line(tmp_path, capsys, case):
    """Items 9 and 10: each of these ended in a traceback (the threads one in a libgomp abort that
    left a stale lock); now one line naming the key, rc 2, and no run folder left behind."""
    from fastdistill.cli import main
    from tests.test_cli_errors import _one_line_error

    overrides, message = CONFIG_CASES[case]
    out = tmp_path / "run"
    assert main(["distill", "--preset", "toy", "steps=1", "progress=false", "teacher.fit_steps=5", *overrides,
                 f"out_dir={out}"]) == 2
    assert message in _one_line_error(capsys, "distill")
    assert not (out / LOCK_FILE).exists()


def test_a_config_file_nested_too_deeply_is_one_line(deep_config, tmp_path, capsys):
    from fastdistill.cli import main
    from tests.test_cli_errors import _one_line_error

    assert main(["distill", "--config", str(deep_config), f"out_dir={tmp_path / 'run'}"]) == 2
    assert "nested too deeply" in _one_line_error(capsys, "distill")


def _disk_full_once(monkeypatch, owner, name):
    """``owner.name`` raises ENOSPC on its first call, as a full disk does, and works after."""
    real, calls = getattr(owner, name), []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "student.safetensors")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, full)


def test_a_full_disk_at_the_final_student_loses_nothing_and_the_same_command_finishes(tmp_path, monkeypatch, capsys):
    """Item 9: a full disk while the final student is written was a traceback; now one line saying
    the trained run is safe in its checkpoint, and the same command again writes the outputs
    without training a step more."""
    from fastdistill.cli import main
    from tests.test_cli_errors import TINY, _one_line_error

    _disk_full_once(monkeypatch, StudentOutputs, "export")
    out = tmp_path / "run"
    argv = ["distill", "--preset", "toy", *TINY, f"out_dir={out}"]
    assert main(argv) == 2
    line = _one_line_error(capsys, "distill")
    assert "No space left on device" in line and "safe in" in line and "run the same command again" in line
    assert not (out / "student.safetensors").exists() and ckpt.latest_checkpoint(out).name == "step-00000002"
    rows = (out / "metrics.jsonl").read_text().count("\n")
    assert main(argv) == 0
    assert (out / "student.safetensors").is_file() and (out / "samples.npz").is_file()
    assert (out / "metrics.jsonl").read_text().count("\n") == rows  # nothing retrained


def test_sample_onto_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    """Item 9: ``sample --out`` on a read-only file system was a traceback (OSErrors other than the
    few named ones were not user errors; test_pipelines' export round trip has the full disk)."""
    import fastdistill.student as student_module
    from fastdistill.cli import main
    from tests.test_cli_errors import TINY, _one_line_error

    run = tmp_path / "run"
    assert main(["distill", "--preset", "toy", *TINY, f"out_dir={run}"]) == 0

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "s.npz"))

    monkeypatch.setattr(student_module, "save_samples", read_only)
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s")]) == 2
    assert "Read-only file system" in _one_line_error(capsys, "sample")
