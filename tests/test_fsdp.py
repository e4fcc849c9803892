"""Sharded training (distributed.strategy=fsdp): FSDP2 of generator, fake network, EMA and teacher
over 2 gloo processes equals one process; sharded (DCP) checkpoints resume bit for bit after a
SIGKILL, load in one process, re-shard for another world size, and are verified like the others."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastdistill.engine import Distiller
from fastdistill.engine import checkpoint as ckpt
from fastdistill.engine.distributed import free_port, shutdown
from fastdistill.engine.run_state import RunState
from fastdistill.engine.shards import SHARDS_DIR, read_shards
from fastdistill.methods import ConfigError
from fastdistill.student import load_student
from tests._engine_helpers import tiny_config, tiny_teacher

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

REPO = Path(__file__).resolve().parents[1]
#: the networks are the MLP denoiser (init=fit, unfitted: an exported student, a non-persistent
#: buffer); clip_grad: the norm of sharded (DTensor) gradients is taken over every rank's shards
OVER = {"threads": 1, "steps": 6, "batch_size": 16, "ckpt_every": 2, "distributed.rng": "global", "optim.lr": 1e-2,
        "optim.clip_grad": 0.5, "distributed.strategy": "fsdp", "teacher.init": "fit", "teacher.fit_steps": 0,
        "teacher.mlp_hidden": 32, "teacher.mlp_layers": 2}
NETS = ("generator", "fake", "ema")


def _kill_at(step: int):
    def callback(d, row):
        if d.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return callback


def _worker(rank: int, world: int, port: int, out_dir: str, extra: dict, report: str, kill_at: int):
    """One rank of a sharded run (SIGKILLed in step ``kill_at`` when > 0); rank 0 writes what it saw
    (shard dtypes, the EMA gathered by hand)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    from torch.distributed.tensor import DTensor

    d = Distiller(tiny_config(out_dir, **{**OVER, **extra}), teacher=tiny_teacher(0),
                  callback=_kill_at(kill_at) if kill_at else None)
    d.run()
    seen = {"dtypes": {name: sorted({str(p.dtype) for p in net.parameters()})
                       for name, net in (("teacher", d.teacher), ("generator", d.G))},
            "dtensor": all(isinstance(p, DTensor) for net in (d.G, d.fake, d.ema.module, d.teacher)
                           for p in net.parameters()),
            "local": [p.to_local().numel() for p in d.G.parameters()],
            "ema": {k: v.full_tensor() for k, v in d.ema.module.state_dict().items()}}  # gathered by hand
    if rank == 0:
        torch.save(seen, report)
    del d
    shutdown()


def _sharded_run(out_dir, world=2, kill_at=0, **extra) -> dict:
    report = Path(out_dir).parent / f"{Path(out_dir).name}-report.pt"
    report.unlink(missing_ok=True)  # an earlier run's into the same folder says nothing of this one
    mp.spawn(_worker, args=(world, free_port(), str(out_dir), extra, str(report), kill_at), nprocs=world, join=True)
    return torch.load(report, weights_only=True)


def _whole(path) -> dict:
    """Every network of a checkpoint as whole tensors, read in this process."""
    path = ckpt.resolve_checkpoint(path)
    tensors, state = ckpt.load_checkpoint(path)
    if RunState.from_dict(state, path).sharded:
        return {name: read_shards(path, name) for name in NETS}
    return {name: tensors[name] for name in NETS}


def _single(out_dir, **extra):
    threads = torch.get_num_threads()
    d = Distiller(tiny_config(out_dir, **{**OVER, **extra}), teacher=tiny_teacher(0))
    d.run()
    torch.set_num_threads(threads)
    return d


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """An uninterrupted 2-rank sharded run (6 steps, checkpoints every 2) and what rank 0 saw."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    return out, _sharded_run(out)


def test_two_sharded_processes_equal_one(sharded, tmp_path):
    out, seen = sharded
    assert seen["dtensor"] and seen["dtypes"]["generator"] == ["torch.float32"]
    single = _whole(_single(tmp_path / "single", **{"distributed.strategy": "ddp"}).out_dir)
    two = _whole(out)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))[1]
    assert state["layout"] == "sharded" and state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 6
    assert sorted(p.name for p in (ckpt.latest_checkpoint(out) / SHARDS_DIR).iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]
    # Adam divides each gradient entry by its own size, so fp32 rounding of small entries (summed in
    # another order over 2 ranks, clipped by a norm taken over shards) reaches the weights at about
    # 1e-5 after 6 steps; 2 DDP ranks differ from one process by as much (5.8e-6 measured, FSDP 6.1e-6).
    # A real fault (a missing average, a wrong shard) moves weights by about lr = 1e-2.
    for name in NETS:
        assert two[name].keys() == single[name].keys()
        for k in two[name]:
            torch.testing.assert_close(two[name][k], single[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


def test_few_step_generator_sharded_equals_one_process(tmp_path):
    """A 3-step DMD generator: its chain makes the same calls of the sharded network on every rank
    (the ranks' sample positions differ), and the run equals one process."""
    over = {"method.name": "dmd", "method.steps": 3, "steps": 3, "ckpt_every": 3}
    _sharded_run(tmp_path / "two", **over)
    single = _whole(_single(tmp_path / "single", **{**over, "distributed.strategy": "ddp"}).out_dir)
    two = _whole(tmp_path / "two")
    for name in NETS:
        for k in two[name]:
            torch.testing.assert_close(two[name][k], single[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


def test_sharded_checkpoint_loads_in_one_process(sharded):
    """load_student (export, sample, eval) assembles the EMA from the shards: the weights rank 0
    gathered by hand (DTensor.full_tensor) at the end of the run; the exported student equals it."""
    out, seen = sharded
    student = load_student(out)
    got = student.net.state_dict()
    assert got.keys() == seen["ema"].keys()
    for k, v in seen["ema"].items():
        assert torch.equal(got[k], v), k
    exported = load_student(out / "student.safetensors").net.state_dict()  # written from the gathered EMA
    assert exported.keys() == got.keys() and all(torch.equal(exported[k], got[k]) for k in got)
    assert torch.equal(student.sample(4, seed=0), load_student(out / "student.safetensors").sample(4, seed=0))


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from tests.test_fsdp import _sharded_run
    _sharded_run(sys.argv[1], kill_at=3)
""")


def test_sigkilled_sharded_run_resumes_bit_identical(sharded, tmp_path):
    """Both ranks SIGKILLed in step 3; the run resumes from its step-2 checkpoint on 2 ranks and ends
    bit-identical to the run that never stopped (weights, EMA and Adam states)."""
    full, _ = sharded
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out)], cwd=REPO, env=env, timeout=300,
                          capture_output=True)
    assert proc.returncode != 0 and b"SIGKILL" in proc.stderr, proc.stderr.decode()[-2000:]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000002"]
    _sharded_run(out, resume="auto")
    a, b = ckpt.latest_checkpoint(full), ckpt.latest_checkpoint(out)
    assert a.name == b.name == "step-00000006"
    for prefix in NETS + ("optim",):
        x, y = read_shards(a, prefix), read_shards(b, prefix)
        assert x.keys() == y.keys() and len(x) > 0
        bad = [k for k in x if not torch.equal(x[k], y[k])]
        assert not bad, f"{prefix} differs: {bad[:5]}"
    sa, sb = (ckpt.load_checkpoint(p)[1] for p in (a, b))
    assert sa["rng"] == sb["rng"] and sa["images_seen"] == sb["images_seen"]


def test_resume_on_another_world_size_reshards(sharded, tmp_path):
    """A 2-rank sharded checkpoint resumes in one process (DCP re-shards; the RNG streams are
    reseeded, as the message says): networks and Adam states are the checkpoint's."""
    out, _ = sharded
    mid = ckpt.list_checkpoints(out)[-2]
    assert mid.name == "step-00000004"
    threads = torch.get_num_threads()
    d = Distiller(tiny_config(tmp_path / "one", **{**OVER, "resume": str(mid)}), teacher=tiny_teacher(0))
    torch.set_num_threads(threads)
    try:
        assert d.step == 4
        for name, net in (("generator", d.G), ("fake", d.fake), ("ema", d.ema.module)):
            want = read_shards(mid, name)
            for k, v in net.state_dict().items():
                assert torch.equal(v, want[k]), f"{name}.{k}"
        moments = read_shards(mid, "optim")
        for net, opt, name in ((d.G, d.updates.opt_g, "generator"), (d.fake, d.updates.opt_f, "fake")):
            for fqn, p in net.named_parameters():
                for k in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(opt.state[p][k], moments[f"{name}.state.{fqn}.{k}"]), f"{name}.{fqn}.{k}"
    finally:
        d.release()


def test_corrupt_shard_and_wrong_layout_are_refused(sharded, tmp_path):
    out, _ = sharded
    run = tmp_path / "run"
    shutil.copytree(out, run)
    newest = ckpt.latest_checkpoint(run)
    shard = newest / SHARDS_DIR / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"shards/__1_0\.distcp has a checksum mismatch"):
        load_student(newest)
    logs = []
    load_student(run, log=logs.append)  # the run directory: the newest intact checkpoint instead
    assert any("skipped checkpoint" in m and "__1_0.distcp" in m for m in logs)
    with pytest.raises(ConfigError, match="is a sharded checkpoint .*strategy=fsdp"):
        Distiller(tiny_config(tmp_path / "ddp", **{**OVER, "distributed.strategy": "ddp", "allow_config_change": True,
                                                   "resume": str(ckpt.list_checkpoints(run)[0])}),
                  teacher=tiny_teacher(0))


def test_bf16_teacher_shards_with_fp32_masters(tmp_path):
    """teacher.dtype=bf16: the sharded teacher's parameters are bf16 (computed in bf16, outputs fp32);
    the trained networks keep fp32 masters."""
    seen = _sharded_run(tmp_path / "bf16", steps=1, ckpt_every=0, **{"teacher.dtype": "bf16"})
    assert seen["dtypes"] == {"teacher": ["torch.bfloat16"], "generator": ["torch.float32"]}
    assert seen["dtensor"] and sum(seen["local"]) > 0
    assert all(torch.isfinite(v).all() for v in seen["ema"].values())


@pytest.mark.parametrize("over,match", [({"precision": "fp16"}, "precision=fp16"), ({"compile": True}, "compile=true"),
                                        ({"distributed.strategy": "zero"}, "distributed.strategy")])
def test_unsupported_combinations_are_config_errors(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(tmp_path, **{**OVER, **over}).validate()


def test_bf16_generic_teacher_needs_sharding(tmp_path):
    with pytest.raises(ConfigError, match="distributed.strategy=fsdp under torchrun"):
        Distiller(tiny_config(tmp_path, **{**OVER, "teacher.dtype": "bf16"}), teacher=tiny_teacher(0))


def test_sharded_text_to_image_run_exports_the_gathered_student(tmp_path):
    """A Stable Diffusion pipeline (tiny, built here) distilled by `torchrun ... distill --teacher
    DIR --prompts FILE distributed.strategy=fsdp` on 2 gloo ranks: UNets sharded, the checkpoint
    sharded; `fastdistill export` writes the UNet that the shards hold (gathered here by hand)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from tests.tiny_pipelines import make_sd_pipeline, write_prompt_file

    make_sd_pipeline(tmp_path / "sd")
    write_prompt_file(tmp_path / "prompts.txt")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "fastdistill.cli", "distill", "--teacher", "sd", "--prompts", "prompts.txt",
           "distributed.strategy=fsdp", "eval_data=none", "steps=2", "batch_size=4", "ckpt_every=2", "out_dir=run",
           "progress=false"]
    proc = subprocess.run(run, cwd=tmp_path, env=env, timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("distilled 2 steps") == 1  # rank 0 alone prints the summary
    newest = ckpt.latest_checkpoint(tmp_path / "run")
    assert RunState.from_dict(ckpt.load_checkpoint(newest)[1], newest).sharded
    export = subprocess.run([sys.executable, "-m", "fastdistill.cli", "export", "run", "exported"], cwd=tmp_path,
                            env=env, timeout=300, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr[-3000:]
    got = load_file(tmp_path / "exported" / "unet" / "diffusion_pytorch_model.safetensors")
    want = {k[len("unet."):]: v for k, v in read_shards(newest, "ema").items() if k.startswith("unet.")}
    assert got.keys() == want.keys() and len(got) > 0
    assert all(torch.equal(got[k], want[k]) for k in got)
    before = load_file(tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(got[k], before[k]) for k in got)  # trained, not the teacher's copy


@pytest.mark.parametrize("init", ["fit", "teacher"])
def test_sharded_lora_with_checkpointing_equals_one_process(tmp_path, init):
    """LoRA adapters (frozen base, trained factors in the same shards) and activation checkpointing
    under FSDP2, on the MLP or on copies of the teacher (each its own base: a sharded teacher is not
    shared): the run equals one process, only the adapters moved, and the student loads."""
    pytest.importorskip("peft")
    over = {"lora.rank": 2, "lora.targets": "fc1,fc2" if init == "fit" else "net.0,net.3", "teacher.init": init,
            "activation_checkpointing": True, "steps": 3, "ckpt_every": 3}
    seen = _sharded_run(tmp_path / "two", **over)
    assert seen["dtensor"]
    single = _single(tmp_path / "single", **{**over, "distributed.strategy": "ddp", "lora.share_base": False})
    two, one = _whole(tmp_path / "two"), _whole(single.out_dir)
    for name in NETS:
        assert two[name].keys() == one[name].keys() and any("lora_" in k for k in two[name])
        for k in two[name]:
            torch.testing.assert_close(two[name][k], one[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    start = {k: v for k, v in single.G.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(two["generator"][k], start[k]) for k in start)  # the base did not move
    x = load_student(tmp_path / "two", network=tiny_teacher(0) if init == "teacher" else None).sample(4, seed=0)
    assert x.shape == (4, 2) and torch.isfinite(x).all()
