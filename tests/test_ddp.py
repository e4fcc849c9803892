"""Data parallel training: 2 gloo processes equal one process with the same global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastdistill.engine import Distiller
from fastdistill.engine import checkpoint as ckpt
from fastdistill.engine.distributed import free_port, shutdown
from tests._engine_helpers import tiny_config, tiny_teacher

OVER = {"threads": 1, "steps": 4, "batch_size": 16, "distributed.rng": "global", "optim.lr": 1e-2}


def _worker(rank: int, world: int, port: int, out_dir: str, extra: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    Distiller(tiny_config(out_dir, **{**OVER, **extra}), teacher=tiny_teacher(0)).run()
    shutdown()


def _run_ddp(out_dir, world=2, **extra):
    mp.spawn(_worker, args=(world, free_port(), str(out_dir), extra), nprocs=world, join=True)
    tensors, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out_dir))
    return tensors, state


def _single(out_dir, **extra):
    threads = torch.get_num_threads()
    d = Distiller(tiny_config(out_dir, **{**OVER, **extra}), teacher=tiny_teacher(0))
    d.run()
    torch.set_num_threads(threads)
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(out_dir))


def _assert_close(a: dict, b: dict):
    for name in ("generator", "fake", "ema"):
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            torch.testing.assert_close(a[name][k], b[name][k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_processes_equal_one(tmp_path):
    ddp, state = _run_ddp(tmp_path / "ddp")
    single, _ = _single(tmp_path / "single")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    _assert_close(ddp, single)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_with_fsdp2_teacher_and_accumulation(tmp_path):
    """FSDP2-sharded teacher and gradient accumulation under DDP give the same result."""
    ddp, _ = _run_ddp(tmp_path / "ddp", **{"distributed.fsdp_teacher": True, "optim.grad_accum": 2})
    single, _ = _single(tmp_path / "single")
    _assert_close(ddp, single)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_with_lora_on_the_teachers_shared_weights(tmp_path):
    """LoRA on the shared base under DDP (the adapters synchronised, the base the teacher's own on
    every rank) equals one process; the checkpoints hold the adapters only."""
    pytest.importorskip("peft")
    over = {"lora.rank": 2, "lora.targets": "net.0,net.3", "activation_checkpointing": True}
    ddp, state = _run_ddp(tmp_path / "ddp", **over)
    single, _ = _single(tmp_path / "single", **over)
    assert set(state["from_teacher"]) == {"generator", "fake", "ema"}
    assert all("lora_" in k for k in ddp["generator"])
    _assert_close(ddp, single)
