"""torch.distributed helpers: set-up under torchrun, rank queries, DDP / FSDP2 wrapping.

A run is distributed when ``WORLD_SIZE > 1`` (torchrun sets it) or a process group is already
initialised. NCCL on GPU, gloo on CPU. Rank 0 alone writes files; every rank keeps its own RNG
states (gathered into the checkpoint).
"""
from __future__ import annotations

import datetime
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def init_from_env(backend: str = "auto", device: torch.device | None = None) -> bool:
    """Initialise the default process group from torchrun's environment; returns whether this run is distributed."""
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend == "auto":
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


def local_device(requested: str) -> torch.device:
    """``auto`` -> this rank's GPU (LOCAL_RANK) when CUDA is present, else CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if requested == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested!r} requested but no CUDA device is visible")
    return dev


def wrap_ddp(module: torch.nn.Module, device: torch.device):
    if not is_dist():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def shard_teacher(module: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) the frozen teacher: each rank holds 1/world of its weights."""
    if not is_dist():
        return module
    from torch.distributed.fsdp import fully_shard

    children = [m for m in module.modules() if m is not module and len(list(m.children())) == 0
                and any(True for _ in m.parameters(recurse=False))]
    # shard big leaf blocks first, then the root (FSDP2 groups parameters per call)
    for m in children:
        if sum(p.numel() for p in m.parameters()) >= 1 << 16:
            fully_shard(m)
    fully_shard(module)
    return module


def no_sync(module, active: bool):
    """DDP's no_sync (skip the gradient all-reduce) for all but the last micro-batch."""
    if active and hasattr(module, "no_sync"):
        return module.no_sync()
    return nullcontext()


def all_gather_object(obj) -> list:
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
