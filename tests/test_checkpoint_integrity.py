"""Checkpoint integrity: checksums verified on load, fallback to the newest intact checkpoint
(resume, ``load_student``, ``fastdistill sample``), clear errors for corrupt checkpoints and
failed writes, stale temporaries removed, and SIGKILLs injected at seeded points of 20
checkpoint writes (through the seam ``checkpoint.phase_hook``, tests/_faults.py) that each
resume to a bit-identical end.

New names are reached as ``ckpt.<name>`` inside the tests so that the module imports on an
older fastdistill and each test fails there for its own reason.
"""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdistill.engine import Distiller, TrainingDiverged
from fastdistill.engine import checkpoint as ckpt
from fastdistill.student import load_student
from fastdistill.teachers import CheckpointError
from tests import _faults as faults
from tests._engine_helpers import tiny_config, tiny_teacher

REPO = Path(__file__).resolve().parents[1]
OVER = {"threads": 1, "ckpt_every": 1, "optim.lr": 1e-2, "log_every": 1000, "log.tensorboard": "false",
        "sample_every": 0}
TOY = ["--preset", "toy", "teacher.fit_steps=50", "eval_samples=256", "eval_every=0", "progress=false",
       "ckpt_every=100", "log_every=100"]
FILES = ("generator", "ema", "fake", "optim")


def teacher():
    return tiny_teacher(0, dropout=0.2)


def config(out, **over):
    return tiny_config(out, **{**OVER, **over})


def run(out, **over) -> Distiller:
    threads = torch.get_num_threads()
    d = Distiller(config(out, **over), teacher=teacher())
    try:
        d.run()
    finally:
        torch.set_num_threads(threads)
    return d


def step_dir(out, step: int) -> Path:
    return ckpt.ckpt_root(out) / f"step-{step:08d}"


def tensors_of(path) -> dict:
    tensors, state = ckpt.load_checkpoint(path)
    flat = {f"{f}.{k}": v for f, sd in tensors.items() for k, v in sd.items()}
    return flat, state


def assert_same_checkpoint(a, b):
    ta, sa = tensors_of(a)
    tb, sb = tensors_of(b)
    assert ta.keys() == tb.keys()
    bad = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not bad, f"{a} and {b} differ in {bad[:5]}"
    for key in ("step", "images_seen", "nan_steps", "consecutive_nan", "rng", "param_groups"):
        assert sa[key] == sb[key], key


def temporaries(out) -> list[str]:
    root = ckpt.ckpt_root(out)
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-")) if root.is_dir() else []


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def scramble(path: Path, seed: int = 0) -> None:
    """Random bytes in the middle of the tensor data (same size, header intact)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(seed)
    at = header + (len(data) - header) // 2
    data[at:at + 16] = bytes(rng.randrange(256) for _ in range(16))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run, a checkpoint every step (keep_last=3: steps 4, 5, 6 remain)."""
    out = tmp_path_factory.mktemp("reference")
    run(out, steps=6)
    return out


@pytest.fixture
def run6(tmp_path, reference):
    """A copy of the reference run to damage."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


# ----------------------------------------------------------------------------- fault injection
STEPS, KILLS, SEED, KEEP = 42, 20, 20240613, 3
WRITES_PER_CKPT = len(FILES) + 1  # four safetensors files and state.json, then checksums.json


def _prunes(n_existing: int, k: int) -> tuple[int, int]:
    """Occurrences (first, last) of the prune phase during the k-th save of a process that starts
    with ``n_existing`` checkpoints, all older (empty range: first > last)."""
    done = 0
    for j in range(1, k + 1):
        p = max(n_existing - (KEEP - 1), 0)
        if j == k:
            return done + 1, done + p
        n_existing, done = n_existing - p + 1, done + p
    raise AssertionError


def _fork_segment(out, spec: str) -> int:
    """One training process (forked, resume=auto) with the faults of ``spec`` installed; its wait status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            signal.alarm(120)  # a hang is a failure, not a stuck test
            torch.set_num_threads(1)  # also after run() restores it: a forked OpenMP pool must stay unused
            faults.install(spec)
            Distiller(config(out, steps=STEPS, resume="auto", keep_last=KEEP), teacher=teacher()).run()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL")
def test_sigkill_at_seeded_points_of_20_checkpoint_writes_resumes_bit_identical(tmp_path):
    """20 processes each SIGKILLed by an injected fault inside one checkpoint write (every
    phase 4 times, in a seeded order, at a seeded file / occurrence), each resumed by the next; the
    last one runs to the end. After every kill no complete checkpoint is lost or corrupt, and the
    final checkpoint equals an uninterrupted run's bit for bit."""
    ref = tmp_path / "uninterrupted"
    run(ref, steps=STEPS, keep_last=KEEP)
    out = tmp_path / "killed"
    rng = random.Random(SEED)
    phases = list(ckpt.WRITE_PHASES) * (KILLS // len(ckpt.WRITE_PHASES))
    rng.shuffle(phases)
    done, log = 0, []
    while phases:
        ckpts = ckpt.list_checkpoints(out)
        s = ckpt._step_of(ckpts[-1]) if ckpts else 0
        phase = phases[0]
        k = rng.choice((1, 2))
        first, last = _prunes(len(ckpts), k)
        if phase == "prune" and first > last:
            first, last = _prunes(len(ckpts), 3 - k)
            k = 3 - k
            if first > last:  # no pruning yet (the first checkpoints of the run): another phase first
                swap = next(i for i, p in enumerate(phases) if p != "prune")
                phases[0], phases[swap] = phases[swap], phases[0]
                continue
        phases.pop(0)
        n = {"write": WRITES_PER_CKPT * (k - 1) + rng.randint(1, WRITES_PER_CKPT),
             "prune": rng.randint(first, last) if phase == "prune" else None}.get(phase, k)
        spec = f"{phase}:{n}"
        log.append(f"from step {s}: {spec}")
        status = _fork_segment(out, spec)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (log, status)
        done += 1
        in_place = phase in ("after-rename", "prune")  # the k-th checkpoint was renamed into place
        expect = s + k - (0 if in_place else 1)
        now = ckpt.list_checkpoints(out)
        assert now and ckpt._step_of(now[-1]) == expect, (log, [p.name for p in now])
        for p in now:  # nothing half-written or half-deleted is visible as a checkpoint
            assert ckpt.verify_checkpoint(p) is True, p
        steps = [ckpt._step_of(p) for p in now]  # the newest ones, none missing, at least keep_last of them
        assert steps == list(range(steps[0], expect + 1)) and len(steps) >= min(expect, KEEP), (log, steps)
        tmp = temporaries(out)
        if phase == "prune":
            assert len(tmp) == 1 and tmp[0].startswith(".tmp-prune-step-"), tmp
        elif not in_place:
            assert len(tmp) == 1 and tmp[0].startswith(f".tmp-step-{expect + 1:08d}-"), (log, tmp)
        else:
            assert tmp == [], tmp
    assert done == KILLS
    assert ckpt._step_of(ckpt.list_checkpoints(out)[-1]) < STEPS, log  # the kills happened before the end
    status = _fork_segment(out, "")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (log, status)
    assert temporaries(out) == []
    assert [p.name for p in ckpt.list_checkpoints(out)] == [p.name for p in ckpt.list_checkpoints(ref)]
    assert_same_checkpoint(step_dir(out, STEPS), step_dir(ref, STEPS))


def test_fault_spec_is_checked():
    with pytest.raises(ValueError, match="fault spec 'rename:1'"):
        faults.install("rename:1")
    assert ckpt.phase_hook is None


# ----------------------------------------------------------------------------- corrupt checkpoints
def test_every_checkpoint_carries_checksums_that_loading_verifies(run6):
    for p in ckpt.list_checkpoints(run6):
        assert (p / "checksums.json").is_file()
        assert ckpt.verify_checkpoint(p) is True


def test_truncated_newest_weights_resume_and_load_student_fall_back(run6, reference, capsys):
    truncate(step_dir(run6, 6) / "generator.safetensors")
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(step_dir(run6, 6))
    assert isinstance(err.value, ckpt.CheckpointCorruptError)
    msg = str(err.value)
    assert "step-00000006" in msg and "generator.safetensors" in msg and "truncated" in msg

    logged = []
    student = load_student(run6, network=teacher(), log=logged.append)
    assert student.info.step == 5
    assert any("skipped" in m and "step-00000006" in m and "generator.safetensors is truncated" in m for m in logged)
    ref5 = load_student(step_dir(reference, 5), network=teacher())
    assert torch.equal(student.sample(8, seed=1), ref5.sample(8, seed=1))

    capsys.readouterr()
    threads = torch.get_num_threads()
    d = Distiller(config(run6, steps=8, resume="auto"), teacher=teacher())
    assert d.step == 5 and d.resumed_from == str(step_dir(run6, 5))
    err_text = capsys.readouterr().err
    assert "skipped checkpoint" in err_text and "step-00000006" in err_text and "truncated" in err_text
    d.run()
    torch.set_num_threads(threads)
    assert ckpt.verify_checkpoint(step_dir(run6, 6)) is True  # the corrupt one was written again


def test_random_bytes_in_weights_fail_the_checksum_and_are_not_loaded(run6, capsys):
    scramble(step_dir(run6, 6) / "ema.safetensors")
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(step_dir(run6, 6))
    assert "ema.safetensors" in str(err.value) and "checksum mismatch" in str(err.value)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ckpt.verify_checkpoint(step_dir(run6, 6))
    d = Distiller(config(run6, steps=8, resume="auto"), teacher=teacher())
    assert d.step == 5
    assert "checksum mismatch" in capsys.readouterr().err


def test_truncated_state_json_is_a_clear_error_and_falls_back(run6, capsys):
    truncate(step_dir(run6, 6) / "state.json", 0.3)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(step_dir(run6, 6))
    assert "state.json" in str(err.value) and "truncated" in str(err.value)
    # the same without checksums (an older checkpoint): unreadable JSON, still not a JSONDecodeError
    (step_dir(run6, 6) / "checksums.json").unlink()
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(step_dir(run6, 6))
    assert "state.json" in str(err.value) and "unreadable JSON" in str(err.value)
    logged = []
    assert load_student(run6, network=teacher(), log=logged.append).info.step == 5
    assert any("step-00000006" in m and "state.json" in m for m in logged)
    assert Distiller(config(run6, steps=8, resume="auto"), teacher=teacher()).step == 5


def test_named_corrupt_checkpoint_is_an_error_naming_the_fallback(run6):
    truncate(step_dir(run6, 6) / "fake.safetensors")
    with pytest.raises(CheckpointError) as err:
        Distiller(config(run6, steps=8, resume=str(step_dir(run6, 6))), teacher=teacher())
    msg = str(err.value)
    assert "step-00000006" in msg and "fake.safetensors" in msg and str(step_dir(run6, 5)) in msg
    with pytest.raises(CheckpointError) as err:
        load_student(step_dir(run6, 6), network=teacher())
    assert str(step_dir(run6, 5)) in str(err.value)
    # a run directory given as resume= falls back like resume=auto
    assert Distiller(config(run6, steps=8, resume=str(run6)), teacher=teacher()).step == 5


def test_no_intact_checkpoint_left_is_an_error_not_a_fresh_start(run6):
    for p in ckpt.list_checkpoints(run6):
        truncate(p / "optim.safetensors")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        Distiller(config(run6, steps=8, resume="auto"), teacher=teacher())


def _as_written_before_checksums(p: Path) -> None:
    state = json.loads((p / ckpt.STATE_FILE).read_text())
    del state[ckpt.CHECKSUMS_KEY]
    (p / ckpt.STATE_FILE).write_text(json.dumps(state))
    (p / "checksums.json").unlink()


def test_checkpoint_without_checksums_loads_with_a_one_time_warning(run6, reference):
    p = step_dir(run6, 6)
    _as_written_before_checksums(p)
    logged = []
    tensors, state = ckpt.load_checkpoint(p, log=logged.append)
    assert state["step"] == 6
    tensors2, _ = ckpt.load_checkpoint(p, log=logged.append)
    assert len(logged) == 1 and "cannot be verified" in logged[0] and str(p) in logged[0]
    ref, _ = tensors_of(step_dir(reference, 6))
    got = {f"{f}.{k}": v for f, sd in tensors2.items() for k, v in sd.items()}
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_diverged_run_names_the_newest_intact_checkpoint(tmp_path, monkeypatch, capsys):
    real_save = ckpt.save_checkpoint

    def save_then_damage(out_dir, step, *args, **kw):  # the newest checkpoint damaged on disk
        path = real_save(out_dir, step, *args, **kw)
        if step == 3:
            scramble(path / "generator.safetensors")
        return path

    def poison(dist, row):
        if dist.step == 3:
            dist.method.generator_loss = lambda *a, **k: (torch.tensor(float("nan"), requires_grad=True), 0)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_damage)
    threads = torch.get_num_threads()
    d = Distiller(config(tmp_path, steps=6, max_nan_steps=1), teacher=teacher(), callback=poison)
    try:
        with pytest.raises(TrainingDiverged) as err:
            d.run()
    finally:
        torch.set_num_threads(threads)
    assert f"the last good checkpoint is {step_dir(tmp_path, 2)}" in str(err.value)
    assert "step-00000003" in capsys.readouterr().err  # said why it was skipped


# ----------------------------------------------------------------------------- failed writes, stale temporaries
def test_disk_full_during_a_checkpoint_is_one_clear_line_and_leaves_nothing(tmp_path, monkeypatch, reference):
    real_write = getattr(ckpt, "_write_file", None)

    def full_disk(path, chunks, size, *args, **kw):
        if path.parent.name.startswith(".tmp-step-00000005") and path.name == "optim.safetensors":
            data = b"".join(bytes(memoryview(c).cast("B")) for c in chunks)
            path.write_bytes(data[:size // 3])  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, chunks, size, *args, **kw)

    monkeypatch.setattr(ckpt, "_write_file", full_disk, raising=False)
    threads = torch.get_num_threads()
    d = Distiller(config(tmp_path, steps=6), teacher=teacher())
    try:
        with pytest.raises(CheckpointError) as err:
            d.run()
    finally:
        torch.set_num_threads(threads)
    exc = err.value
    assert isinstance(exc, ckpt.CheckpointWriteError) and exc.errno == errno.ENOSPC
    msg = str(exc)
    assert "\n" not in msg
    assert "step-00000005" in msg and "No space left on device" in msg and "optim.safetensors" in msg
    assert "intact" in msg and "step-00000004" in msg
    assert temporaries(tmp_path) == []
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000004"]
    for p in ckpt.list_checkpoints(tmp_path):
        assert ckpt.verify_checkpoint(p) is True
    monkeypatch.setattr(ckpt, "_write_file", real_write)  # space freed: resume to the end, exactly
    d = run(tmp_path, steps=6, resume="auto")
    assert d.resumed_from == str(step_dir(tmp_path, 4))
    assert_same_checkpoint(step_dir(tmp_path, 6), step_dir(reference, 6))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temporaries_of_dead_writers_are_removed_when_a_run_starts(run6):
    root = ckpt.ckpt_root(run6)
    dead = _dead_pid()
    for name in (f".tmp-step-00000007-{dead}", f".tmp-prune-step-00000001-{dead}", f".tmp-old-step-00000006-{dead}"):
        (root / name).mkdir()
        (root / name / "generator.safetensors").write_bytes(b"partial")
    d = Distiller(config(run6, steps=8, resume="auto"), teacher=teacher())
    assert temporaries(run6) == []
    assert d.step == 6
    d.release()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live writer's temporary (another process writing shards, say) is not the lock holder's to remove
        (root / f".tmp-step-00000009-{sleeper.pid}").mkdir()
        (root / f".tmp-step-00000009-{_dead_pid()}").mkdir()
        Distiller(config(run6, steps=8, resume="auto"), teacher=teacher()).release()
        assert temporaries(run6) == [f".tmp-step-00000009-{sleeper.pid}"]
    finally:
        sleeper.kill()
        sleeper.wait()


# ----------------------------------------------------------------------------- the command line
def _cli(*args, faults_spec="", timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = ["-c", faults.CLI, faults_spec] if faults_spec else ["-m", "fastdistill.cli"]
    return subprocess.run([sys.executable, *command, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """``fastdistill distill`` (toy preset, a checkpoint every step) SIGKILLed by the fault hook just
    before its 4th checkpoint is renamed into place: steps 1-3 complete, step 4 a temporary."""
    out = tmp_path_factory.mktemp("toy") / "run"
    r = _cli("distill", *TOY, f"out_dir={out}", "steps=5", "ckpt_every=1",
             faults_spec="before-rename:4")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "killing this process at before-rename #4" in r.stderr
    return out


def test_fastdistill_sample_falls_back_from_a_truncated_newest_checkpoint(toy_run, tmp_path):
    assert [p.name for p in ckpt.list_checkpoints(toy_run)] == ["step-00000001", "step-00000002", "step-00000003"]
    assert [t[:18] for t in temporaries(toy_run)] == [".tmp-step-00000004"]
    run_dir = tmp_path / "run"
    shutil.copytree(toy_run, run_dir)
    truncate(step_dir(run_dir, 3) / "ema.safetensors")
    r = _cli("sample", str(run_dir), "-n", "16", "--seed", "3", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    assert "skipped checkpoint" in r.stderr and "step-00000003" in r.stderr and "ema.safetensors is truncated" in r.stderr
    x = np.load(tmp_path / "s.npz")["samples"]
    expected = load_student(step_dir(run_dir, 2)).sample(16, seed=3).numpy()
    np.testing.assert_array_equal(x, expected)
    # the damaged checkpoint named directly: a one-line error naming the intact one, exit code 2
    r = _cli("sample", str(step_dir(run_dir, 3)), "-n", "4", "--out", str(tmp_path / "t"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "step-00000003" in r.stderr and "truncated" in r.stderr and str(step_dir(run_dir, 2)) in r.stderr


# ----------------------------------------------------------------------------- streamed tensor files
def test_tensor_files_are_streamed_tensor_by_tensor_and_read_by_safetensors(tmp_path):
    """A checkpoint's safetensors file is written from views of the tensors themselves (a copy only
    of one that is not contiguous), so writing never holds the whole file; safetensors reads every
    dtype and shape back exactly, and the returned checksum is the file's."""
    import hashlib

    from safetensors.torch import load_file

    from fastdistill.engine.tensor_files import safetensors_chunks

    tensors = {"w": torch.randn(3, 4), "conv": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
               "step": torch.tensor(3.0), "empty": torch.zeros(0), "half": torch.randn(5).bfloat16(),
               "mask": torch.tensor([True, False]), "index": torch.arange(5)}
    chunks, size = safetensors_chunks(tensors)
    header = next(chunks)
    assert np.shares_memory(next(chunks), tensors["w"].numpy())  # a view, not a copy
    rest = list(chunks)
    written = ckpt._write_file(tmp_path / "t.safetensors", [header, tensors["w"].numpy().view(np.uint8), *rest], size)
    data = (tmp_path / "t.safetensors").read_bytes()
    assert written == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} and len(data) == size
    back = load_file(str(tmp_path / "t.safetensors"))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with pytest.raises(TypeError, match="safetensors has no torch.complex64"):
        safetensors_chunks({"z": torch.zeros(2, dtype=torch.complex64)})
