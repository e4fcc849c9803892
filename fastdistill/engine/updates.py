"""The optimiser side of one iteration: a method's fake-score and generator updates on the
parallelized networks, each over the run's micro-batches (gradient accumulation), with loss
scaling, sanitised and clipped gradients, and the noise streams they draw from. The optimiser is
Adam as SiD uses it (betas (0, 0.999), constant lr, no weight decay) or AdamW with decoupled weight
decay (DMD2's), fused or foreach."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import distributed as D
from ..teachers.toolkit import sanitize_gradients
from .lora import set_trainable
from .monitor import NVTX


def make_adam(groups: list[dict], betas, eps: float, impl: str, device: torch.device,
              weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, or AdamW when ``weight_decay`` > 0, over parameter ``groups`` (``{"params": [...],
    "lr": ...}`` each; frozen parameters left out). ``impl``: fused (one kernel; CUDA and recent
    CPU builds), foreach (multi-tensor), plain, or auto."""
    params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    kw = dict(betas=tuple(betas), eps=eps, weight_decay=float(weight_decay))
    if impl == "auto":
        impl = "fused" if _fused_supported(device) else "foreach"
    if impl == "fused":
        return cls(params, fused=True, **kw)
    if impl == "foreach":
        return cls(params, foreach=True, **kw)
    return cls(params, foreach=False, **kw)


def _fused_supported(device: torch.device) -> bool:
    try:
        p = torch.zeros(2, device=device, requires_grad=True)
        opt = torch.optim.Adam([p], fused=True)
        p.grad = torch.ones_like(p)
        opt.step()
        return True
    except Exception:
        return False


@torch.no_grad()
def sanitize_grads(params) -> None:
    """The toolkit's gradient clean-up on each parameter's gradient, shard by shard."""
    sanitize_gradients(D.local(p.grad) for p in params if p.grad is not None)


def _slice(noise, a: int, b: int):
    return dataclasses.replace(noise, **{f.name: (None if getattr(noise, f.name) is None else getattr(noise, f.name)[a:b])
                                          for f in dataclasses.fields(noise)})


@dataclass
class Phase:
    """One update's outcome: the loss averaged over ranks, the non-finite samples of the whole
    batch, whether the optimiser stepped, and (when asked) the generator's detached samples."""
    loss: float
    nan_samples: int
    applied: bool
    kept: list


class Updates:
    """Optimisers, loss scaler and noise generators of the two trained networks, and the updates
    that use them. ``nets``: the raw generator and fake network; ``trainable``: their trained
    parameters (all, or the LoRA factors); ``shape``, ``label_dim``: the data's, for the noise."""

    def __init__(self, cfg, method, par, nets: dict, trainable: dict, shape, label_dim: int, process, nvtx: NVTX):
        self.cfg, self.method, self.par, self.nets, self.trainable = cfg, method, par, nets, trainable
        self.shape, self.label_dim, self.process, self.nvtx = tuple(shape), label_dim, process, nvtx
        o, device = cfg.optim, process.device
        eps = o.eps or (1e-6 if cfg.precision == "fp16" else 1e-8)
        self.opt_g, self.opt_f = (make_adam(method.param_groups(name, trainable[name], o), (o.beta1, o.beta2), eps,
                                            o.impl, device, o.weight_decay) for name in ("generator", "fake"))
        #: what each update steps: the network's trained parameters and the method's modules it trains
        self.stepped = {name: [p for group in opt.param_groups for p in group["params"]]
                        for name, opt in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        # noise generators (per rank, or shared for rng=global); real-data batches have their own CPU stream
        noise_seed = cfg.seed * 7919 + 17 + (0 if cfg.distributed.rng == "global" else 104729 * process.rank)
        self.gen = torch.Generator(device=device).manual_seed(noise_seed)
        self.data_gen = torch.Generator().manual_seed(noise_seed + 1)

    @property
    def optimizers(self) -> dict:
        return {"generator": self.opt_g, "fake": self.opt_f}

    @property
    def generators(self) -> dict:
        return {"noise": self.gen, "data": self.data_gen}

    def iteration(self, stop) -> dict:
        """The updates of one iteration in the method's order, then DMD2's extra fake updates;
        ``stop`` (a :class:`~fastdistill.engine.process.Stop`) is agreed over the ranks on the way.
        Returns the losses, non-finite samples and whether both networks' updates applied."""
        m = self.method
        if not m.uses_fake:  # e.g. IGN: no fake-score network
            gen = self._timed("generator", stop=stop)
            fake = Phase(0.0, 0, True, [])
        elif m.reuses_samples:  # DMD2's order: the generator step, then the fake step on its samples
            gen = self._timed("generator", stop=stop, keep_samples=True)
            fake = self._timed("fake", samples=gen.kept)
        else:
            fake = self._timed("fake")
            gen = self._timed("generator", stop=stop)
        nan_f, ok_f = fake.nan_samples, fake.applied
        for _ in range(self.cfg.optim.fake_steps - 1 if m.uses_fake else 0):
            fake = self._timed("fake")
            nan_f, ok_f = nan_f + fake.nan_samples, ok_f and fake.applied
        self.par.reshard()
        return dict(loss_fake=fake.loss, loss_gen=gen.loss, nan_samples=nan_f + gen.nan_samples, ok=ok_f and gen.applied)

    def _timed(self, kind: str, **kw) -> Phase:
        with self.nvtx(f"{kind}_step"):
            return self.phase(kind, **kw)

    def noises(self, kind: str) -> list:
        """This rank's micro-batches of noise for one update (``rng=global``: slices of the whole batch's)."""
        draw_noise = self.method.draw_fake_noise if kind == "fake" else self.method.draw_generator_noise
        cfg, p = self.cfg, self.process
        if cfg.distributed.rng == "global":
            full = draw_noise(cfg.batch_size, self.shape, self.label_dim, self.gen, p.device)
            base = p.rank * p.per_rank
            return [_slice(full, base + m * p.micro, base + (m + 1) * p.micro) for m in range(cfg.optim.grad_accum)]
        return [draw_noise(p.micro, self.shape, self.label_dim, self.gen, p.device)
                for _ in range(cfg.optim.grad_accum)]

    def phase(self, kind: str, samples: Optional[list] = None, keep_samples: bool = False, stop=None) -> Phase:
        """One fake or generator update. A fake update given ``samples`` (each micro-batch's
        generator samples and conditioning) fits those instead of fresh ones; ``keep_samples``
        keeps the generator's. A generator update also agrees ``stop`` over the ranks."""
        accum = self.cfg.optim.grad_accum
        opt, params = self._select(kind)
        opt.zero_grad(set_to_none=True)
        stats = torch.zeros(3, dtype=torch.float64, device=self.process.device)  # loss sum, non-finite, stop flag
        kept = []
        for m, noise in enumerate(self.noises(kind)):
            with self.par.no_sync(kind, m < accum - 1):
                loss, nan = self._loss(kind, noise, None if samples is None else samples[m], kept if keep_samples else None)
                (self.scaler.scale(loss / accum) if self.scaler is not None else loss / accum).backward()
            stats[0] += loss.detach().double() / accum
            stats[1] += nan
        if stop is not None:
            stats[2] = float(stop.requested)
        D.all_reduce_sum(stats)
        if stop is not None and stats[2] > 0:
            stop.requested = True
        loss_mean, nan_samples = float(stats[0]) / self.process.world, int(stats[1])
        ok = math.isfinite(loss_mean) and nan_samples <= self.cfg.max_nan_fraction * self.cfg.batch_size
        if ok:
            self._step(opt, params)
        opt.zero_grad(set_to_none=True)
        return Phase(loss_mean, nan_samples, ok, kept)

    def _select(self, kind: str):
        """Train mode and gradients for the updated network only; its optimiser and the parameters it
        steps (the network's trained ones and any of the method's own modules it trains)."""
        self.par.reshard()
        other = "generator" if kind == "fake" else "fake"
        self.nets[kind].train()
        self.nets[other].eval()
        set_trainable(self.nets[other], None)
        set_trainable(self.nets[kind], self.trainable[kind])
        return self.optimizers[kind], self.stepped[kind]

    def _loss(self, kind: str, noise, given: Optional[tuple], kept: Optional[list]):
        par, m = self.par, self.method
        if kind == "fake" and given is not None:
            x_g, cond = given
            return m.fake_loss(par.g_eval, par.f_train, dataclasses.replace(noise, cond=cond), samples=x_g)
        if kind == "fake":
            return m.fake_loss(par.g_eval, par.f_train, noise)
        if kept is not None:
            loss, nan, x_g = m.generator_loss_and_samples(par.g_train, par.t_call, par.f_frozen, noise)
            kept.append((x_g, noise.cond))
            return loss, nan
        return m.generator_loss(par.g_train, par.t_call, par.f_frozen, noise)

    def _step(self, opt, params) -> None:
        self.par.average_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        sanitize_grads(params)
        if self.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
