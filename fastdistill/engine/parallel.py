"""How a run's networks are called: the one place that knows about DDP, FSDP2, activation
checkpointing and ``torch.compile``.

:func:`parallelize` takes the plain networks (generator, fake network, EMA copy, teacher) and
applies, in this order: identical starting weights on every rank; FSDP2 sharding of every
network (``distributed.strategy=fsdp``) or DDP of the two trained ones (and FSDP2 of the teacher
alone with ``distributed.fsdp_teacher``); activation checkpointing (diffusers' own per-block
checkpointing where every network has it, else the whole call); compilation. The loop calls
what it returns and asks it the few things that differ between strategies (which module's
gradient sync to skip during accumulation, when to re-shard, how to get the whole EMA on rank 0).
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..methods import ConfigError
from ..teachers.traits import TeacherTraits, traits
from . import distributed as D
from .build import bf16_is_fast, compile_network

__all__ = ["Parallel", "parallelize"]


class _Checkpointed(torch.nn.Module):
    """Activation checkpointing of a whole network call (recompute in backward)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        if torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.fn, *args, use_reentrant=False)
        return self.fn(*args)


@dataclass
class Parallel:
    """What each phase calls: ``g_train`` / ``f_train`` (trained, gradients synchronised),
    ``g_eval`` / ``f_frozen`` (the same networks where they are not trained), ``t_call`` (the
    teacher); ``synced``: per phase, the module whose gradient sync :meth:`no_sync` skips."""

    g_train: Callable
    g_eval: Callable
    f_train: Callable
    f_frozen: Callable
    t_call: Callable
    synced: dict
    sharded: tuple = ()
    frame: Optional[torch.nn.Module] = None
    device: Optional[torch.device] = None
    replicated: tuple = ()  # the method's own modules: whole on every rank

    def average_gradients(self) -> None:
        """The method's own modules' gradients averaged over the ranks before a step (what DDP does
        for the generator and fake network; a no-op on one process)."""
        if not D.is_dist():
            return
        for p in (p for m in self.replicated for p in m.parameters()):
            if p.grad is not None:
                D.all_reduce_sum(p.grad).div_(D.world_size())

    def check_evaluation(self, evaluating: bool) -> None:
        """Refuse evaluation during a sharded run (collective: rank 0 says whether it evaluates)."""
        if self.sharded and D.broadcast_object(evaluating):
            raise ConfigError("distributed.strategy=fsdp does not evaluate during training yet (rank 0 alone "
                              "would need the whole teacher and generator): set eval_data=none and score the "
                              "run afterwards with `fastdistill eval`")

    def no_sync(self, phase: str, skip: bool):
        """Skip the gradient all-reduce of ``phase``'s network for an accumulation micro-batch."""
        return _no_sync(self.synced[phase], skip)

    def reshard(self) -> None:
        """Every sharded network back to its shards, so that trainable flags, optimiser, EMA and
        state dicts act on them (a no-op without sharding)."""
        for net in self.sharded:
            _reshard(net)

    def whole(self, ema: torch.nn.Module) -> Optional[torch.nn.Module]:
        """The EMA generator as one plain module for rank 0's samples, pictures and export: gathered
        from its shards when sharded (collective: every rank calls it; None on the others)."""
        return _gather_whole(ema, self.frame, self.device) if self.frame is not None else ema


def teacher_precision(cfg, teacher: TeacherTraits, device: torch.device) -> Optional[torch.dtype]:
    """``teacher.dtype``: a diffusers teacher's network is cast to bf16 here (its schedule stays in
    float64); any other teacher runs in bf16 only as FSDP2's mixed precision when sharded, whose
    parameter dtype is returned (else None). Called once the students are built: their own copies
    stay fp32, a base they share with the teacher (``lora.share_base``) is cast with it."""
    bf16 = cfg.teacher.dtype == "bf16" or (cfg.teacher.dtype == "auto" and teacher.latent and bf16_is_fast(device))
    if bf16 and teacher.network is not None:
        teacher.network.to(torch.bfloat16)
        return None
    sharded = D.is_dist() and cfg.distributed.strategy == "fsdp"
    if bf16 and not sharded:
        raise ConfigError("teacher.dtype=bf16 is for diffusers teachers (their UNet runs in bf16, the schedule "
                          "stays in float64) and for teachers sharded by distributed.strategy=fsdp under "
                          "torchrun; use precision=bf16 to autocast other teachers")
    return torch.bfloat16 if bf16 else None


def _same_start(nets) -> None:
    """Identical starting weights (adapters included) on every rank."""
    for net in nets:
        for t in list(net.parameters()) + list(net.buffers()):
            torch.distributed.broadcast(t.data, src=0)


def shards_networks(cfg) -> bool:
    """Whether the run keeps its networks (and so its checkpoints) in shards."""
    return cfg.distributed.strategy == "fsdp"


def parallelize(generator: torch.nn.Module, fake: torch.nn.Module, ema: torch.nn.Module, teacher,
                teacher_traits: TeacherTraits, cfg, device: torch.device, method_modules: dict) -> Parallel:
    """The teacher in its precision (:func:`teacher_precision`), then the run's networks wrapped for
    ``cfg`` (in place where sharding; see the module docstring). The denoising network inside a
    pipeline teacher (its traits' ``network``) is the part that is sharded and checkpointed per
    block; the generator and the fake network, copies of the teacher, hold theirs under the same name.
    ``method_modules`` (a method's own trained modules) move to ``device`` and stay whole on every rank."""
    teacher_param_dtype = teacher_precision(cfg, teacher_traits, device)
    teacher_network = teacher_traits.network
    distributed = D.is_dist()
    fsdp = distributed and shards_networks(cfg)
    if method_modules and shards_networks(cfg):
        raise ConfigError(f"method {cfg.method.name} trains modules of its own ({', '.join(method_modules)}), which "
                          f"distributed.strategy=fsdp does not shard yet: use distributed.strategy=ddp")
    for module in method_modules.values():
        module.to(device)
    frame, sharded = None, ()
    if distributed:
        _same_start((generator, fake, ema, *method_modules.values()))
    if fsdp:  # fp32 masters, gradients reduce-scattered; a parameter-free frame for gathering the EMA
        frame = _skeleton(generator)
        for net in (generator, fake, ema):
            _shard(net)
        g_sync, f_sync = generator, fake
        sharded = (generator, fake) + ((teacher,) if isinstance(teacher, torch.nn.Module) else ())
    else:
        g_sync, f_sync = _wrap_ddp(generator, device), _wrap_ddp(fake, device)
    if distributed and (cfg.distributed.fsdp_teacher or fsdp) and isinstance(teacher, torch.nn.Module):
        _shard(teacher_network if teacher_network is not None else teacher, teacher_param_dtype)  # in place

    # diffusers networks checkpoint block by block (their own implementation), all three networks,
    # since SiD's and SIM's gradients pass through the teacher too; other networks as a whole call
    blocks = (traits(generator).network, traits(fake).network, teacher_network)
    per_block = cfg.activation_checkpointing and all(hasattr(n, "enable_gradient_checkpointing") for n in blocks)
    if per_block:
        for net in blocks:
            net.enable_gradient_checkpointing()

    def prep(fn, grad_path=True):
        if cfg.compile:
            fn = compile_network(fn, cfg.compile_scope, cfg.compile_mode)
        if cfg.activation_checkpointing and grad_path and not per_block:
            fn = _Checkpointed(fn)
        return fn

    g_train, f_train = prep(g_sync), prep(f_sync)
    replicated = distributed and not fsdp  # DDP wrappers only for the trained passes
    return Parallel(g_train=g_train, g_eval=prep(generator, grad_path=False) if replicated else g_train,
                    f_train=f_train, f_frozen=prep(fake) if replicated else f_train,
                    t_call=prep(teacher) if isinstance(teacher, torch.nn.Module) else teacher,
                    synced={"generator": g_sync, "fake": f_sync}, sharded=sharded, frame=frame, device=device,
                    replicated=tuple(method_modules.values()))


# -- the wrappers --------------------------------------------------------------------------------
def _wrap_ddp(module: torch.nn.Module, device: torch.device):
    if not D.is_dist():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)

def _shard(module: torch.nn.Module, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
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

def _reshard(module: torch.nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 unit of ``module`` (no communication). FSDP2
    keeps a root unit gathered after a forward without backward; until resharded, the module's
    parameters are those gathered copies, not the sharded ones that ``requires_grad_`` must
    switch and the optimiser and EMA update."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()

def _skeleton(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with its parameters on the meta device (no memory), buffers kept: the
    frame :func:`_gather_whole` fills with a sharded module's full weights."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)

def _gather_whole(module: torch.nn.Module, frame: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The full weights of a sharded ``module`` in a copy of its :func:`_skeleton` ``frame`` on
    ``device``, on rank 0 (None on the others). Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not D.is_main():
        return None
    whole = copy.deepcopy(frame)
    whole.load_state_dict(full, assign=True)
    return whole.to(device)

def _no_sync(module, active: bool):
    """DDP's no_sync (skip the gradient all-reduce) for all but the last micro-batch."""
    if active and hasattr(module, "no_sync"):
        return module.no_sync()
    return nullcontext()
