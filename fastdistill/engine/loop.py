"""The training loop: one loop for every method and every Denoiser teacher.

One iteration = one fake-score (DSM) update, then one generator update, each on a fresh
``z`` (ALGORITHMS.md section 1), then the generator EMA. Entry point: :func:`run_distillation`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..methods import get_method
from ..methods.base import FakeNoise, GeneratorNoise, MethodContext
from . import checkpoint as ckpt
from . import distributed as D
from .build import build_data, build_teacher, copy_net, fit_denoiser, make_mlp, mlp_arch, resolve_init
from .config import ConfigError, DistillConfig
from .ema import EMA, ema_beta
from .monitor import NVTX, JSONLLogger, progress_bar
from .optim import make_adam, sanitize_grads

FORMAT = "fastdistill-distill/1"
RESUME_HINT = "resume with resume=auto"  # printed when a run stops early (Ctrl-C, request_stop)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps."""


@dataclass
class DistillResult:
    out_dir: str
    step: int
    images_seen: int
    checkpoint: Optional[str]
    elapsed_s: float
    nan_steps: int
    interrupted: bool = False
    metrics: dict = field(default_factory=dict)  # quality numbers: sw_* (vector data) or fid_* (images with eval data)
    picture: Optional[str] = None
    samples: Optional[str] = None


def _slice(noise, a: int, b: int):
    return dataclasses.replace(noise, **{f.name: (None if getattr(noise, f.name) is None else getattr(noise, f.name)[a:b])
                                          for f in dataclasses.fields(noise)})


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


class Distiller:
    """Holds the networks, optimisers and state of one run. ``Distiller(cfg).run()``."""

    def __init__(self, cfg: DistillConfig, teacher=None, callback: Optional[Callable] = None,
                 init_network: Optional[torch.nn.Module] = None):
        self.cfg = cfg.validate()
        self.callback = callback
        self.device = D.local_device(cfg.device)
        self.distributed = D.init_from_env(cfg.distributed.backend, self.device)
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        self._prev_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # restored when run() returns
        per_rank, rem = divmod(cfg.batch_size, self.world)
        if rem:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the world size {self.world}")
        self.micro, rem = divmod(per_rank, cfg.optim.grad_accum)
        if rem or self.micro == 0:
            raise ConfigError(f"per-rank batch {per_rank} is not divisible by optim.grad_accum {cfg.optim.grad_accum}")
        self.per_rank = per_rank
        self.out_dir = Path(cfg.out_dir)
        # fail early: before any teacher loading or fitting
        err = None
        if self.main:
            try:
                ckpt.check_writable(self.out_dir)
            except PermissionError as exc:
                err = str(exc)
        err = D.broadcast_object(err)
        if err:
            raise PermissionError(err)
        self.resume_path = self._find_resume()

        torch.manual_seed(cfg.seed + 1000 * self.rank)
        np.random.seed((cfg.seed + 1000 * self.rank) % 2**32)
        random.seed(cfg.seed + 1000 * self.rank)

        # ---------------------------------------------------------------- networks
        self.teacher = build_teacher(cfg, teacher)
        if isinstance(self.teacher, torch.nn.Module):
            self.teacher = self.teacher.to(self.device).eval().requires_grad_(False)
        from ..sampling import data_shape_of

        self.shape = data_shape_of(self.teacher)
        self.label_dim = int(getattr(self.teacher, "label_dim", 0) or 0)
        self.init = resolve_init(cfg, self.teacher) if init_network is None else "given"
        self.arch = None
        if init_network is not None:
            base = copy_net(init_network)
        elif self.init == "teacher":
            base = copy_net(self.teacher)
        else:
            self.arch = mlp_arch(cfg, self.teacher)
            base = make_mlp(self.arch)
            if self.resume_path is None and cfg.teacher.fit_steps > 0:
                fit_denoiser(base, self.teacher, cfg.teacher.fit_steps, cfg.teacher.fit_batch, cfg.teacher.fit_lr,
                             cfg.seed, self.device, progress=cfg.progress and self.main)
        base = base.to(self.device).float()
        base.requires_grad_(True)
        if self.distributed:  # identical starting weights on every rank
            for t in list(base.parameters()) + list(base.buffers()):
                torch.distributed.broadcast(t.data, src=0)
        self.G = base
        self.arch_config = None  # class + init kwargs that rebuild the generator (registered teacher classes)
        try:
            from ..teachers.checkpoint import teacher_config

            self.arch_config = teacher_config(base)
        except Exception:
            pass
        self.fake = copy_net(base)
        self.ema = EMA(self.G, copy_net(base))
        self.sigma_data = float(getattr(self.teacher, "sigma_data", 0.5))

        self.method = get_method(cfg.method.name, cfg.method, backend=cfg.method.backend)
        self.method.sigma_data = self.sigma_data
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        dev_type = self.device.type
        self.method.autocast = (lambda: torch.autocast(dev_type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(dev_type) if cfg.precision == "fp16" else None

        # callables: DDP for the trained passes, plain modules elsewhere; optional compile/checkpointing
        g_ddp = D.wrap_ddp(self.G, self.device)
        f_ddp = D.wrap_ddp(self.fake, self.device)
        self.g_ddp, self.f_ddp = g_ddp, f_ddp
        teacher_call = self.teacher
        if self.distributed and cfg.distributed.fsdp_teacher and isinstance(self.teacher, torch.nn.Module):
            teacher_call = D.shard_teacher(self.teacher)

        def prep(fn, grad_path=True):
            if cfg.compile:
                fn = torch.compile(fn)
            if cfg.activation_checkpointing and grad_path:
                fn = _Checkpointed(fn)
            return fn

        self.g_train = prep(g_ddp)
        self.g_eval = prep(self.G, grad_path=False) if self.distributed else self.g_train
        self.f_train = prep(f_ddp)
        self.f_frozen = prep(self.fake) if self.distributed else self.f_train
        self.t_call = prep(teacher_call) if isinstance(teacher_call, torch.nn.Module) else teacher_call

        o = cfg.optim
        eps = o.eps or (1e-6 if cfg.precision == "fp16" else 1e-8)
        self.opt_g = make_adam(self.G.parameters(), o.lr, (o.beta1, o.beta2), eps, o.impl, self.device)
        self.opt_f = make_adam(self.fake.parameters(), o.fake_lr or o.lr, (o.beta1, o.beta2), eps, o.impl, self.device)

        # noise generators (per rank, or shared for rng=global)
        noise_seed = cfg.seed * 7919 + 17 + (0 if cfg.distributed.rng == "global" else 104729 * self.rank)
        self.gen = torch.Generator(device=self.device).manual_seed(noise_seed)
        # real-data batches (methods that declare needs "data") are drawn on the CPU from their own stream
        self.data_gen = torch.Generator().manual_seed(noise_seed + 1)
        if self.method.needs:
            self.method.bind(MethodContext(
                teacher=self.t_call, net=self.G, ema=self.ema.module,
                data=build_data(cfg, self.teacher, self.shape, self.label_dim) if "data" in self.method.needs else None,
                data_generator=self.data_gen, shape=tuple(self.shape), label_dim=self.label_dim,
                device=self.device, seed=cfg.seed, progress=cfg.progress and self.main))

        self.step = 0
        self.images_seen = 0
        self.nan_steps = 0
        self.consecutive_nan = 0
        self._stop = False
        self._stop_hint = RESUME_HINT
        self.nvtx = NVTX(cfg.nvtx)
        self.history: list[dict] = []
        if self.resume_path is not None:
            self.load(self.resume_path)

    # ------------------------------------------------------------------ resume
    def _find_resume(self) -> Optional[Path]:
        r = self.cfg.resume
        if r == "none":
            return None
        if r == "auto":
            return ckpt.latest_checkpoint(self.out_dir)
        p = Path(r)
        if (p / ckpt.STATE_FILE).is_file():
            return p
        latest = ckpt.latest_checkpoint(p)  # a run directory
        if latest is None:
            raise FileNotFoundError(f"resume={r!r}: no complete checkpoint found there")
        return latest

    def state_tensors(self) -> dict:
        og, gg = ckpt.optimizer_tensors(self.opt_g, "generator")
        of, gf = ckpt.optimizer_tensors(self.opt_f, "fake")
        self._groups = {"generator": gg, "fake": gf}
        return {"generator": self.G.state_dict(), "ema": self.ema.module.state_dict(),
                "fake": self.fake.state_dict(), "optim": {**og, **of}}

    def save(self) -> Optional[Path]:
        """Checkpoint (collective: every rank contributes its RNG state; rank 0 writes)."""
        rngs = D.all_gather_object(ckpt.rng_state({"noise": self.gen, "data": self.data_gen}))
        path = None
        if self.main:
            with self.nvtx("checkpoint"):
                tensors = self.state_tensors()
                state = {
                    "format": FORMAT, "config": self.cfg.to_dict(), "step": self.step,
                    "images_seen": self.images_seen, "nan_steps": self.nan_steps,
                    "consecutive_nan": self.consecutive_nan, "param_groups": self._groups,
                    "world_size": self.world, "rng": rngs, "data_shape": list(self.shape),
                    "label_dim": self.label_dim, "sigma_init": self.cfg.method.sigma_init,
                    "sigma_data": self.sigma_data, "init": self.init, "arch": self.arch,
                    "arch_config": self.arch_config,
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                }
                path = ckpt.save_checkpoint(self.out_dir, self.step, tensors, state, self.cfg.keep_last)
        D.barrier()
        return path

    def load(self, path: Path) -> None:
        tensors, state = ckpt.load_checkpoint(path)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a distillation checkpoint (format {state.get('format')!r})")
        self.G.load_state_dict(tensors["generator"])
        self.fake.load_state_dict(tensors["fake"])
        self.ema.module.load_state_dict(tensors["ema"])
        groups = state["param_groups"]
        ckpt.load_optimizer(self.opt_g, tensors["optim"], groups["generator"], "generator")
        ckpt.load_optimizer(self.opt_f, tensors["optim"], groups["fake"], "fake")
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.nan_steps, self.consecutive_nan = int(state["nan_steps"]), int(state["consecutive_nan"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == self.world:
            ckpt.set_rng_state(rngs[self.rank], {"noise": self.gen, "data": self.data_gen})
        elif self.main:
            print(f"fastdistill: checkpoint written by {len(rngs)} ranks, resuming on {self.world}: RNG streams reseeded")
        self.resumed_from = str(path)

    # ------------------------------------------------------------------ noise
    def _noises(self, kind: str):
        draw = self.method.draw_fake_noise if kind == "fake" else self.method.draw_generator_noise
        if self.cfg.distributed.rng == "global":
            full = draw(self.cfg.batch_size, self.shape, self.label_dim, self.gen, self.device)
            base = self.rank * self.per_rank
            return [_slice(full, base + m * self.micro, base + (m + 1) * self.micro)
                    for m in range(self.cfg.optim.grad_accum)]
        return [draw(self.micro, self.shape, self.label_dim, self.gen, self.device)
                for _ in range(self.cfg.optim.grad_accum)]

    # ------------------------------------------------------------------ one iteration
    def _backward(self, loss):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _phase(self, kind: str) -> tuple[float, int, bool]:
        """One fake or generator update. Returns (mean loss, NaN samples, applied)."""
        accum = self.cfg.optim.grad_accum
        if kind == "fake":
            self.G.eval().requires_grad_(False)
            self.fake.train().requires_grad_(True)
            opt, params, ddp = self.opt_f, list(self.fake.parameters()), self.f_ddp
        else:
            self.G.train().requires_grad_(True)
            self.fake.eval().requires_grad_(False)
            opt, params, ddp = self.opt_g, list(self.G.parameters()), self.g_ddp
        opt.zero_grad(set_to_none=True)
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, NaN samples, stop flag
        for m, noise in enumerate(self._noises(kind)):
            with D.no_sync(ddp, m < accum - 1):
                if kind == "fake":
                    loss, nan = self.method.fake_loss(self.g_eval, self.f_train, noise)
                else:
                    loss, nan = self.method.generator_loss(self.g_train, self.t_call, self.f_frozen, noise)
                self._backward(loss / accum)
            stats[0] += loss.detach().double() / accum
            stats[1] += nan
        if kind == "generator":
            stats[2] = float(self._stop)
        D.all_reduce_sum(stats)
        loss_mean = float(stats[0]) / self.world
        nan_samples = int(stats[1])
        if kind == "generator" and stats[2] > 0:
            self._stop = True
        ok = math.isfinite(loss_mean) and nan_samples <= self.cfg.max_nan_fraction * self.cfg.batch_size
        if ok:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            sanitize_grads(params)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_mean, nan_samples, ok

    def train_step(self) -> dict:
        if self.method.uses_fake:
            with self.nvtx("fake_step"):
                loss_f, nan_f, ok_f = self._phase("fake")
        else:  # e.g. IGN: no fake-score network
            loss_f, nan_f, ok_f = 0.0, 0, True
        with self.nvtx("generator_step"):
            loss_g, nan_g, ok_g = self._phase("generator")
        with self.nvtx("ema"):
            beta = ema_beta(self.cfg.batch_size, self.images_seen, self.cfg.ema.halflife_kimg, self.cfg.ema.rampup)
            self.ema.update(beta)
        self.images_seen += self.cfg.batch_size
        self.step += 1
        if ok_f and ok_g:
            self.consecutive_nan = 0
        else:
            self.nan_steps += 1
            self.consecutive_nan += 1
            if self.consecutive_nan >= self.cfg.max_nan_steps:
                raise TrainingDiverged(
                    f"stopping at step {self.step}: {self.consecutive_nan} consecutive non-finite steps "
                    f"({self.nan_steps} in total). Lower optim.lr, try precision=fp32, or check the teacher; "
                    f"the last good checkpoint is in {ckpt.ckpt_root(self.out_dir)}")
        return dict(loss_fake=loss_f, loss_gen=loss_g, nan_samples=nan_f + nan_g, ema_beta=beta,
                    skipped=int(not (ok_f and ok_g)), **self.method.log_terms())

    # ------------------------------------------------------------------ evaluation / pictures
    @torch.no_grad()
    def student_samples(self, n: int, seed: int, net=None) -> torch.Tensor:
        net = net if net is not None else self.ema.module
        from ..evaluation import eval_draw

        z, labels = eval_draw(n, self.shape, self.label_dim, seed)
        z, labels = z.to(self.device), None if labels is None else labels.to(self.device)
        was = net.training
        net.eval()
        out = torch.cat([self.method.generate(net, z[i:i + 1024], None if labels is None else labels[i:i + 1024])
                         for i in range(0, n, 1024)])
        net.train(was)
        return out.cpu()

    def _image_evaluator(self):
        """FID tracking for image runs (``eval_data``, else ``data``, else digits for the digits teacher)."""
        if not hasattr(self, "_img_eval"):
            self._img_eval = None
            name = self.cfg.eval_data or self.cfg.data or ("digits" if self.cfg.teacher.path == "digits" else "")
            if len(self.shape) == 3 and name and name != "none":
                from ..evaluation import LoopEvaluator

                try:
                    import torch_fidelity  # noqa: F401
                except ImportError:
                    print("fastdistill: FID tracking off (needs torch-fidelity: pip install 'fastdistill[eval]')")
                    return None
                self._img_eval = LoopEvaluator(name, self.cfg.eval_samples, self.teacher)
                if self._img_eval.ref.data_shape != tuple(self.shape):
                    raise ConfigError(f"eval_data {name!r} has sample shape {self._img_eval.ref.data_shape}, "
                                      f"the teacher {tuple(self.shape)}")
        return self._img_eval

    def _evaluates(self) -> bool:
        return self._vector_data() or self._image_evaluator() is not None

    def _vector_data(self) -> bool:
        return len(self.shape) == 1 and hasattr(self.teacher, "sample")

    @torch.no_grad()
    def baselines(self) -> dict:
        """Data-vs-data and teacher (35-NFE Heun) distances to the data, computed once."""
        if hasattr(self, "_baselines"):
            return self._baselines
        from ..metrics import sliced_wasserstein
        from ..sampling import sample as teacher_sample

        n = self.cfg.eval_samples
        g = torch.Generator().manual_seed(9_000_001)
        self._data = self.teacher.sample(n, generator=g).float().cpu()
        data2 = self.teacher.sample(n, generator=g).float().cpu()
        self._teacher_x = teacher_sample(self.teacher, n, seed=9_000_002, num_steps=18, solver="heun").float().cpu()
        self._baselines = {
            "sw_data_vs_data": float(sliced_wasserstein(self._data, data2, seed=1)),
            "sw_teacher_heun35": float(sliced_wasserstein(self._teacher_x, self._data, seed=1)),
        }
        return self._baselines

    @torch.no_grad()
    def evaluate(self, net=None) -> dict:
        ev = self._image_evaluator() if not self._vector_data() else None
        if ev is not None:
            x = self.student_samples(ev.n, seed=9_000_003, net=net)
            return {**ev.baselines(), "fid_student": ev(x)}
        if not self._vector_data():
            return {}
        from ..metrics import sliced_wasserstein

        out = dict(self.baselines())
        x = self.student_samples(self.cfg.eval_samples, seed=9_000_003, net=net)
        out["sw_student"] = float(sliced_wasserstein(x, self._data, seed=1))
        return out

    def save_picture(self, path: Path) -> Path:
        from .visual import image_grid, scatter_panels

        if len(self.shape) == 3:
            return image_grid(self.student_samples(64, seed=9_000_004), path)
        x = self.student_samples(min(self.cfg.eval_samples, 2000), seed=9_000_004)
        panels = []
        if self._vector_data():
            self.baselines()
            panels = [("data", self._data[:2000]), ("teacher (Heun, 35 evals)", self._teacher_x[:2000])]
        panels.append((f"student (1 step, step {self.step})", x))
        return scatter_panels(panels, path)

    def export_student(self, path: Path) -> Optional[Path]:
        """The EMA generator's denoiser in the teacher checkpoint format (``load_teacher`` reads it);
        the one-step generator is ``D(sigma_init z; sigma_init)``. Skipped for unregistered classes."""
        if self.arch_config is None:
            return None
        from ..teachers.checkpoint import save_teacher

        save_teacher(self.ema.module, path, extra={"one_step_generator": True,
                                                   "sigma_init": self.cfg.method.sigma_init,
                                                   "method": self.cfg.method.name, "step": self.step})
        return path

    # ------------------------------------------------------------------ the loop
    def request_stop(self, hint: str = RESUME_HINT) -> None:
        """Checkpoint after the current step and return from :meth:`run` (what Ctrl-C does);
        ``hint`` is printed with the step, e.g. how to continue the run."""
        self._stop = True
        self._stop_hint = hint

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        prev = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop:  # second Ctrl-C: give up at once
                signal.signal(signal.SIGINT, prev if callable(prev) else signal.default_int_handler)
                raise KeyboardInterrupt
            self.request_stop()
            if self.main:
                print("\nfastdistill: interrupt received; checkpointing after this step (Ctrl-C again to abort)", flush=True)

        signal.signal(signal.SIGINT, handler)
        return prev

    def run(self) -> DistillResult:
        cfg = self.cfg
        t0 = time.time()
        logger = JSONLLogger(self.out_dir / "metrics.jsonl", enabled=self.main)
        if self.main:
            (self.out_dir / "config.json").write_text(cfg.to_json())
        prev = self._install_sigint()
        bar = progress_bar(cfg.steps, self.step, cfg.progress and self.main)
        last_ckpt = None
        metrics: dict = {}
        interrupted = False
        try:
            if self.main and self._evaluates() and self.step == 0:
                metrics = self.evaluate(net=self.G)
                q = "fid" if "fid_student" in metrics else "sw"
                metrics = {f"{q}_initial": metrics.pop(f"{q}_student"), **metrics}
                self.initial_metrics = dict(metrics)
                logger.log(step=0, kimg=0.0, **metrics)
            tick, tick_step = time.time(), self.step
            while self.step < cfg.steps:
                row = self.train_step()
                if bar is not None:
                    bar.update(1)
                if self.callback is not None:
                    self.callback(self, row)
                last = self.step == cfg.steps
                if self.main and (self.step % max(cfg.log_every, 1) == 0 or last):
                    now = time.time()
                    rate = (self.step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
                    tick, tick_step = now, self.step
                    rec = dict(step=self.step, kimg=self.images_seen / 1000, img_per_s=rate, nan_steps=self.nan_steps, **row)
                    if self._evaluates() and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                        rec.update(self.evaluate())
                        metrics.update(rec)
                    logger.log(**rec)
                    self.history.append(rec)
                    if bar is not None:
                        post = dict(gen=f"{row['loss_gen']:.3g}", fake=f"{row['loss_fake']:.3g}", img_s=f"{rate:.0f}")
                        if "sw_student" in rec:
                            post["sw"] = f"{rec['sw_student']:.4f}"
                        if "fid_student" in rec:
                            post["fid"] = f"{rec['fid_student']:.3g}"
                        bar.set_postfix(post)
                if self.main and cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_picture(self.out_dir / f"samples-{self.step:08d}.png")
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last:
                    last_ckpt = self.save()
                if self._stop and not last:
                    interrupted = True
                    last_ckpt = self.save()
                    if self.main:
                        print(f"fastdistill: stopped at step {self.step}; {self._stop_hint}", flush=True)
                    break
            if self.step >= cfg.steps and last_ckpt is None and cfg.steps > 0 and self.main:
                last_ckpt = ckpt.latest_checkpoint(self.out_dir)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
            if prev is not None:
                signal.signal(signal.SIGINT, prev)
            torch.set_num_threads(self._prev_threads)
        picture = samples = None
        if self.main and not interrupted:
            picture = str(self.save_picture(self.out_dir / "samples.png"))
            x = self.student_samples(min(self.cfg.eval_samples, 4096), seed=9_000_005)
            samples = str(self.out_dir / "samples.npz")
            np.savez(samples, samples=x.numpy())
            self.export_student(self.out_dir / "student.safetensors")
        if hasattr(self, "initial_metrics"):
            for k in ("sw_initial", "fid_initial"):
                if k in self.initial_metrics:
                    metrics.setdefault(k, self.initial_metrics[k])
        quality = {k: v for k, v in metrics.items() if k.startswith(("sw_", "fid_"))}
        if self.main and not interrupted and quality:
            from ..evaluation import plot_run_curve

            plot_run_curve(self.out_dir, quality)
        return DistillResult(out_dir=str(self.out_dir), step=self.step, images_seen=self.images_seen,
                             checkpoint=str(last_ckpt) if last_ckpt else None, elapsed_s=time.time() - t0,
                             nan_steps=self.nan_steps, interrupted=interrupted, metrics=quality,
                             picture=picture, samples=samples)


def run_distillation(config=None, teacher=None, overrides=None, callback=None,
                     init_network: Optional[torch.nn.Module] = None) -> DistillResult:
    """Distil a teacher into a one-step generator.

    config: a :class:`DistillConfig`, a dict, a path to a JSON/TOML file, a preset name, or
    None for the default toy preset. overrides: ``["optim.lr=1e-4", ...]``. teacher: a Denoiser
    object (with ``teacher.kind=network``, or to replace the configured one).
    """
    from .config import DistillConfig, preset_config

    if config is None:
        cfg = preset_config("toy")
    elif isinstance(config, DistillConfig):
        cfg = config
    elif isinstance(config, dict):
        d = dict(config)
        preset = d.pop("preset", None)
        cfg = (preset_config(preset) if preset else DistillConfig()).merged(d)
    elif isinstance(config, str) and not os.path.exists(config) and "/" not in config and "." not in config:
        cfg = preset_config(config)
    else:
        cfg = DistillConfig.from_file(config)
    cfg = cfg.with_overrides(overrides or [])
    if teacher is not None and cfg.teacher.kind != "network":
        cfg = cfg.with_overrides(["teacher.kind=network"])
    return Distiller(cfg, teacher=teacher, callback=callback, init_network=init_network).run()
