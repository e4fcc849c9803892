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

    def no_sync(self, phase: str, skip: bool):
        """Skip the gradient all-reduce of ``phase``'s network for an accumulation micro-batch."""
        return D.no_sync(self.synced[phase], skip)

    def reshard(self) -> None:
        """Every sharded network back to its shards, so that trainable flags, optimiser, EMA and
        state dicts act on them (a no-op without sharding)."""
        for net in self.sharded:
            D.reshard(net)

    def whole(self, ema: torch.nn.Module) -> Optional[torch.nn.Module]:
        """The EMA generator as one plain module for rank 0's samples, pictures and export: gathered
        from its shards when sharded (collective: every rank calls it; None on the others)."""
        return D.gather_whole(ema, self.frame, self.device) if self.frame is not None else ema


def teacher_precision(cfg, teacher: TeacherTraits, device: torch.device) -> Optional[torch.dtype]:
    """``teacher.dtype``: a diffusers teacher's network is cast to bf16 here (its schedule stays in
    float64); any other teacher runs in bf16 only as FSDP2's mixed precision when sharded, whose
    parameter dtype is returned (else None). Call after the generator copied the fp32 teacher."""
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


def parallelize(generator: torch.nn.Module, fake: torch.nn.Module, ema: torch.nn.Module, teacher,
                teacher_traits: TeacherTraits, cfg, device: torch.device) -> Parallel:
    """The teacher in its precision (:func:`teacher_precision`), then the run's networks wrapped for
    ``cfg`` (in place where sharding; see the module docstring). The denoising network inside a
    pipeline teacher (its traits' ``network``) is the part that is sharded and checkpointed per
    block; the generator and the fake network, copies of the teacher, hold theirs under the same name."""
    teacher_param_dtype = teacher_precision(cfg, teacher_traits, device)
    teacher_network = teacher_traits.network
    distributed = D.is_dist()
    fsdp = distributed and cfg.distributed.strategy == "fsdp"
    frame, sharded = None, ()
    if distributed:
        _same_start((generator, fake, ema))
    if fsdp:  # fp32 masters, gradients reduce-scattered; a parameter-free frame for gathering the EMA
        frame = D.skeleton(generator)
        for net in (generator, fake, ema):
            D.shard(net)
        g_sync, f_sync = generator, fake
        sharded = (generator, fake) + ((teacher,) if isinstance(teacher, torch.nn.Module) else ())
    else:
        g_sync, f_sync = D.wrap_ddp(generator, device), D.wrap_ddp(fake, device)
    if distributed and (cfg.distributed.fsdp_teacher or fsdp) and isinstance(teacher, torch.nn.Module):
        D.shard(teacher_network if teacher_network is not None else teacher, teacher_param_dtype)  # in place

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
                    synced={"generator": g_sync, "fake": f_sync}, sharded=sharded, frame=frame, device=device)
