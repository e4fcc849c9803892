"""torch.distributed helpers: set-up under torchrun, rank queries, DDP / FSDP2 wrapping.

A run is distributed when ``WORLD_SIZE > 1`` (torchrun sets it) or a process group is already
initialised. NCCL on GPU, gloo on CPU. Rank 0 alone writes files; every rank keeps its own RNG
states (gathered into the checkpoint).
"""
from __future__ import annotations

import copy
import datetime
import gc
import os
import socket
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


def free_port() -> int:
    """A TCP port free on this host now, for a local process group's rendezvous (tests, scripts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if is_dist():
        dist.barrier()


def shutdown() -> None:
    """End this process's part in the run's process group: wait for every rank, then destroy it.

    Call it once the networks that hold the group (DDP, FSDP2) are gone: a group destroyed while
    they live is freed at interpreter exit, where gloo's threads abort the rank (SIGABRT in about
    1 run in 10 on CPU, and torchrun reports the run failed)."""
    if not is_dist():
        return
    gc.collect()  # the networks sit in reference cycles (hooks, the EMA's copy) and would outlive this call
    dist.barrier()
    dist.destroy_process_group()


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


def shard(module: torch.nn.Module, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) in place: each rank keeps 1/world of every parameter (a DTensor),
    all-gathered around each forward and backward; gradients are reduce-scattered.

    Groups: the big leaf blocks (>= 2**16 elements) each, then the root for the rest. With
    ``param_dtype`` (a frozen bf16 teacher) the parameters are stored, gathered and computed in
    that dtype and every leaf with parameters is its own group, so each casts its own inputs
    (``MixedPrecisionPolicy``); outputs come back in fp32. Without it parameters, gathers and the
    gradient reduce-scatter (``ReduceOp.AVG``, which gloo has on CPU: scripts/check_gloo_collectives.py)
    stay in the parameters' dtype: fp32 masters for the trained networks.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy() if param_dtype is None else MixedPrecisionPolicy(param_dtype=param_dtype,
                                                                                  output_dtype=torch.float32)
    leaves = [m for m in module.modules() if m is not module and len(list(m.children())) == 0
              and any(True for _ in m.parameters(recurse=False))]
    if param_dtype is not None:
        for p in module.parameters():
            p.data = p.data.to(param_dtype)
    for m in leaves:
        if param_dtype is not None or sum(p.numel() for p in m.parameters()) >= 1 << 16:
            fully_shard(m, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return module


def reshard(module: torch.nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 unit of ``module`` (no communication). FSDP2
    keeps a root unit gathered after a forward without backward; until resharded, the module's
    parameters are those gathered copies, not the sharded ones that ``requires_grad_`` must
    switch and the optimiser and EMA update."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def skeleton(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with its parameters on the meta device (no memory), buffers kept: the
    frame :func:`gather_whole` fills with a sharded module's full weights."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)


def gather_whole(module: torch.nn.Module, frame: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The full weights of a sharded ``module`` in a copy of its :func:`skeleton` ``frame`` on
    ``device``, on rank 0 (None on the others). Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    whole = copy.deepcopy(frame)
    whole.load_state_dict(full, assign=True)
    return whole.to(device)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2 parameters and gradients), the same memory; other tensors as they are."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


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
