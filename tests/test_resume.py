"""Exact resume: a run stopped (Ctrl-C) or killed (SIGKILL mid-checkpoint) and resumed ends
bit-for-bit equal, on the CPU, to a run that never stopped."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fastdistill.engine import Distiller
from fastdistill.engine import checkpoint as ckpt
from tests._engine_helpers import tiny_config, tiny_teacher

REPO = Path(__file__).resolve().parents[1]
OVER = {"threads": 1, "steps": 6, "ckpt_every": 2, "optim.lr": 1e-2}


def teacher():
    return tiny_teacher(0, dropout=0.2)  # dropout: the global torch RNG matters too


def state_of(d: Distiller) -> dict:
    out = {}
    for name, sd in d.trained.whole_tensors()[0].items():
        out.update({f"{name}.{k}": v.detach().clone() for k, v in sd.items()})
    return out


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"differ: {bad[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    d = Distiller(tiny_config(tmp_path_factory.mktemp("full"), **OVER), teacher=teacher())
    d.run()
    torch.set_num_threads(threads)
    return state_of(d), d.updates.gen.get_state(), torch.get_rng_state()


def test_ctrl_c_then_resume_is_exact(tmp_path, uninterrupted):
    threads = torch.get_num_threads()

    def interrupt_at_3(dist, row):
        if dist.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    d = Distiller(tiny_config(tmp_path, **OVER), teacher=teacher(), callback=interrupt_at_3)
    r = d.run()
    assert r.interrupted and r.step == 3
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    d2 = Distiller(tiny_config(tmp_path, resume="auto", **OVER), teacher=teacher())
    assert d2.step == 3
    r2 = d2.run()
    torch.set_num_threads(threads)
    assert r2.step == 6 and not r2.interrupted
    full, gen_state, rng = uninterrupted
    assert_bitwise_equal(state_of(d2), full)
    assert torch.equal(d2.updates.gen.get_state(), gen_state)


def test_request_stop_checkpoints_and_prints_the_hint(tmp_path, capsys):
    """The digits report stops a student this way when its time budget is spent."""
    threads = torch.get_num_threads()

    def stop_at_2(dist, row):
        if dist.step == 2:
            dist.request_stop("continue with: fastdistill distill --preset X resume=auto")

    r = Distiller(tiny_config(tmp_path, **OVER), teacher=teacher(), callback=stop_at_2).run()
    torch.set_num_threads(threads)
    assert r.interrupted and r.step == 2
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert "stopped at step 2; continue with: fastdistill distill --preset X resume=auto" in capsys.readouterr().out


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import torch
    from fastdistill.engine import Distiller
    from fastdistill.engine import checkpoint as ckpt
    from tests._engine_helpers import tiny_config, tiny_teacher

    out, marker = sys.argv[1], Path(sys.argv[2])
    def hook(path):
        if path.parent.name.startswith(".tmp-step-00000004") and path.name == "fake.safetensors":
            marker.write_text("writing")
            time.sleep(120)
    ckpt._after_file_written = hook
    cfg = tiny_config(out, threads=1, steps=6, ckpt_every=2, **{"optim.lr": 1e-2})
    Distiller(cfg, teacher=tiny_teacher(0, dropout=0.2)).run()
""")


def test_sigkill_during_checkpoint_resumes_from_last_complete(tmp_path, uninterrupted):
    out, marker = tmp_path / "run", tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), str(marker)], cwd=REPO, env=env)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, "the training process ended before the checkpoint write"
            assert time.time() < deadline, "timed out waiting for the checkpoint write"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    root = ckpt.ckpt_root(out)
    assert any(p.name.startswith(".tmp-step-00000004") for p in root.iterdir())  # the torn write
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000002"]
    threads = torch.get_num_threads()
    d = Distiller(tiny_config(out, resume="auto", **OVER), teacher=teacher())
    assert d.step == 2
    d.run()
    torch.set_num_threads(threads)
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())  # cleaned by the next save
    full, gen_state, _ = uninterrupted
    assert_bitwise_equal(state_of(d), full)


def _conv_teacher(dropout=0.1):
    from fastdistill.teachers.precond import EDMPrecond

    torch.manual_seed(0)
    return EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=16, channel_mult=[1],
                      num_blocks=1, attn_resolutions=[8], dropout=dropout)


def test_channels_last_training_and_resume(tmp_path):
    """channels_last changes the memory layout, not the run: the same losses as the default layout
    without dropout (its masks are drawn in memory order) to rounding (parameters are not
    compared: Adam's first steps amplify rounding where a gradient is near zero), and a resumed channels_last run (Adam moments restored in the
    parameters' layout) bit-for-bit equal to an uninterrupted one."""
    over = dict(OVER, steps=4, batch_size=4, **{"method.backend": "reference"})
    runs = {}
    for name, cl in (("nchw", False), ("full", True)):
        d = Distiller(tiny_config(tmp_path / name, channels_last=cl, **over), teacher=_conv_teacher(dropout=0.0))
        assert d.G.model.enc["8x8_block0"].conv0.weight.is_contiguous(memory_format=torch.channels_last) == cl
        runs[name] = [d.train_step() for _ in range(4)]
        d.release()
    a, b = runs["nchw"], runs["full"]
    for k in ("loss_fake", "loss_gen"):
        assert a[0][k] == pytest.approx(b[0][k], rel=1e-5)
        assert [r[k] for r in a] == pytest.approx([r[k] for r in b], rel=1e-2)

    def stop_at_2(dist, row):
        if dist.step == 2:
            dist.request_stop()

    full = Distiller(tiny_config(tmp_path / "full-cl", channels_last=True, **over), teacher=_conv_teacher())
    full.run()
    part = Distiller(tiny_config(tmp_path / "part", channels_last=True, **over), teacher=_conv_teacher(), callback=stop_at_2)
    assert part.run().step == 2
    resumed = Distiller(tiny_config(tmp_path / "part", channels_last=True, resume="auto", **over), teacher=_conv_teacher())
    moments = [v for s in resumed.updates.opt_g.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim == 4]
    assert moments and all(v.is_contiguous(memory_format=torch.channels_last) for v in moments)
    resumed.run()
    assert_bitwise_equal(state_of(full), state_of(resumed))


def test_fp16_loss_scale_is_checkpointed_and_resumed(tmp_path):
    """fp16's GradScaler state travels with the checkpoint: a resumed run continues from the scale
    (and growth count) the interrupted one reached, not from the initial 65536."""
    over = dict(OVER, steps=4, precision="fp16", ckpt_every=2, **{"optim.lr": 1e-2})
    full = Distiller(tiny_config(tmp_path / "full", **over), teacher=tiny_teacher(0))
    full.run()
    half = Distiller(tiny_config(tmp_path / "half", **dict(over, steps=2)), teacher=tiny_teacher(0))
    half.run()
    reached = half.updates.scaler.state_dict()
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "half"))[1]["scaler"] == reached
    resumed = Distiller(tiny_config(tmp_path / "half", resume="auto", **over), teacher=tiny_teacher(0))
    assert resumed.updates.scaler.state_dict() == reached
    resumed.run()
    assert resumed.updates.scaler.state_dict() == full.updates.scaler.state_dict()
    assert_bitwise_equal(state_of(full), state_of(resumed))
