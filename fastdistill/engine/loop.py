"""The training loop: one loop for every method and every Denoiser teacher.

One iteration = one fake-score (DSM) update, then one generator update, each on a fresh
``z`` (docs/algorithms.md section 1), then ``optim.fake_steps - 1`` further fake updates
(DMD2's update ratio), then the generator EMA. With ``method.reuse_samples``
(DMD's default, DMD2's recipe) the generator update comes first and the fake update fits its
samples. Entry point: :func:`run_distillation`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..conditioning import ConditioningBank
from ..data.prompts import read_prompts
from ..methods import ConfigError, MethodContext, get_method, noise_levels
from ..plotting import image_grid, scatter_panels
from ..sampling import DEFAULT_SIGMA_END, draw
from ..teachers.traits import traits
from . import checkpoint as ckpt
from . import distributed as D
from .build import (COMPILE_ON_CPU, bf16_is_fast, build_data, build_teacher, copy_net, fit_denoiser, make_mlp,
                    mlp_arch, resolve_init)
from .config import DistillConfig, preset_config
from .ema import EMA, ema_beta
from .lora import add_lora, set_trainable, trainable_parameters
from .parallel import parallelize, teacher_precision
from .run_checkpoints import RunCheckpoints, Trained
from .throughput import count_flops, dense_yardstick
from .prompts import encoded_prompts, prompts_sha256
from .evaluator import LoopEvaluator, Quality, plot_run_curve
from .identity import RunLock, architecture_of, check_resume, check_run_folder, run_identity
from .monitor import NVTX, MetricsLogger, progress_bar
from .optim import make_adam, sanitize_grads

#: signals that checkpoint the run and stop it (see Distiller._install_signal_handlers)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
RESUME_HINT = "resume with resume=auto"  # printed when a run stops early (Ctrl-C, request_stop)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps."""


@dataclass
class DistillResult:
    out_dir: str
    step: int
    images_seen: int
    checkpoint: Optional[str]
    elapsed_s: float  # training, its evaluations and checkpoints
    nan_steps: int
    interrupted: bool = False
    quality: Optional[Quality] = None  # the last evaluation (with the initial generator's score), when the run evaluates
    picture: Optional[str] = None
    samples: Optional[str] = None
    stop_signal: Optional[int] = None  # the signal that stopped the run early, if one did
    final_s: float = 0.0  # the final outputs after training: the student, samples.npz (final_samples), pictures


def _slice(noise, a: int, b: int):
    return dataclasses.replace(noise, **{f.name: (None if getattr(noise, f.name) is None else getattr(noise, f.name)[a:b])
                                          for f in dataclasses.fields(noise)})


class Distiller:
    """Holds the networks, optimisers and state of one run. ``Distiller(cfg).run()``."""

    def __init__(self, cfg: DistillConfig, teacher=None, callback: Optional[Callable] = None,
                 init_network: Optional[torch.nn.Module] = None):
        self.cfg = cfg.validate()
        self.callback = callback
        self._setup_process()
        self._check_output()
        self._lock()
        try:
            self.checkpoints = RunCheckpoints(self.out_dir, cfg.keep_last, sharded=cfg.distributed.strategy == "fsdp",
                                              main=self.main, rank=self.rank, world=self.world)
            self.resume_path = self.checkpoints.find(cfg.resume)
            self._seed_global_rngs()
            self._build_networks(teacher, init_network)
            self.identity = run_identity(cfg, self.teacher, architecture_of(self.G, self.arch_config or self.arch),
                                         self.prompts_sha256)
            self._build_method()
            self._build_callables()
            self._build_optimizers()
            self._bind_method()
            self.evaluator = LoopEvaluator.for_run(cfg, self.teacher, self.shape) if self.main else None
            if self.main:
                print(f"fastdistill: {self.describe()}", flush=True)
                if cfg.teacher.family and self.traits.family != cfg.teacher.family:
                    print(f"fastdistill: warning: this recipe was made for {cfg.teacher.family} teachers (its timesteps, "
                          f"guidance and learning rates), the teacher is {self.traits.family or 'not a pipeline'}: check "
                          f"them (teacher.family= silences this)", flush=True)
            if self.par.sharded and D.broadcast_object(self.evaluator is not None):
                raise ConfigError("distributed.strategy=fsdp does not evaluate during training yet (rank 0 alone "
                                  "would need the whole teacher and generator): set eval_data=none and score the "
                                  "run afterwards with `fastdistill eval`")
            self.step = 0
            self.images_seen = 0
            self.nan_steps = 0
            self.consecutive_nan = 0
            self.stop_signal: Optional[int] = None
            self._stop = False
            self._stop_hint = RESUME_HINT
            self.nvtx = NVTX(cfg.nvtx)
            self.history: list[dict] = []
            self.initial_quality: Optional[float] = None
            self.config_changes: list[dict] = []
            if self.resume_path is not None:
                self.load(self.resume_path)
        except BaseException:
            self.release()
            self._remove_empty_output()
            raise

    # ------------------------------------------------------------------ set-up, in order
    def _setup_process(self) -> None:
        """Device, process group, threads, and the per-rank / per-micro-batch split of the batch."""
        cfg = self.cfg
        self.device = D.local_device(cfg.device)
        D.init_from_env(cfg.distributed.backend, self.device)
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        tf32 = cfg.precision == "tf32" and self.device.type == "cuda"
        # restored when run() returns: the threads, and the matmul precision where this run sets it
        self._prev_process = (torch.get_num_threads(), torch.get_float32_matmul_precision() if tf32 else None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.precision == "tf32":
            if tf32:  # matmuls too (cuDNN's convolutions use TF32 by default)
                torch.set_float32_matmul_precision("high")
            elif self.main:
                print(f"fastdistill: precision=tf32 on {self.device}: TF32 is a CUDA format, this run computes in fp32")
        per_rank, rem = divmod(cfg.batch_size, self.world)
        if rem:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the world size {self.world}")
        self.micro, rem = divmod(per_rank, cfg.optim.grad_accum)
        if rem or self.micro == 0:
            raise ConfigError(f"per-rank batch {per_rank} is not divisible by optim.grad_accum {cfg.optim.grad_accum}")
        self.per_rank = per_rank

    def _lock(self) -> None:
        """Only one process writes into a run directory (rank 0 holds the lock for all ranks, and alone
        clears what dead writers left, once it holds it)."""
        lock = RunLock(self.out_dir, force=self.cfg.force)
        if self.main:
            lock.acquire()
            ckpt.remove_stale_temporaries(self.out_dir)
        self._release_lock = weakref.finalize(self, lock.release)

    def _restore_process(self) -> None:
        """The threads and matmul precision the process had before this run."""
        threads, matmul = self._prev_process
        torch.set_num_threads(threads)
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)

    def release(self) -> None:
        """Give the run directory back (the end of :meth:`run` does this; also when the object goes)."""
        self._release_lock()

    def _check_output(self) -> None:
        """Fail before any teacher loading or fitting when the output directory is not writable."""
        self.out_dir = Path(self.cfg.out_dir)
        self._created = [p for p in (ckpt.ckpt_root(self.out_dir), self.out_dir) if not p.exists()]
        err = None
        if self.main:
            try:
                check_run_folder(self.out_dir)
                ckpt.check_writable(self.out_dir)
            except (ConfigError, PermissionError) as exc:
                err = (type(exc), str(exc))
        err = D.broadcast_object(err)
        if err:
            raise err[0](err[1])

    def _remove_empty_output(self) -> None:
        """A run that failed before training leaves no empty folders behind (only those it made)."""
        if not self.main:
            return
        for p in self._created:
            try:
                p.rmdir()
            except OSError:  # not empty (or already gone): keep it
                pass

    def _seed_global_rngs(self) -> None:
        seed = self.cfg.seed + 1000 * self.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _build_networks(self, teacher, init_network) -> None:
        """The frozen teacher (and its training prompts), then the generator, fake network and EMA,
        which start from the teacher's weights, from ``init_network``, or from an MLP fitted to it."""
        cfg = self.cfg
        self.teacher = build_teacher(cfg, teacher)
        if isinstance(self.teacher, torch.nn.Module):
            self.teacher = self.teacher.to(self.device).eval().requires_grad_(False)
        self.traits = traits(self.teacher)
        self._build_conditions()
        self.shape, self.label_dim, self.sigma_data = self.traits.data_shape, self.traits.label_dim, self.traits.sigma_data
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
        self.G = base
        from ..teachers.checkpoint import teacher_config

        try:  # class + init kwargs that rebuild the generator (registered teacher classes)
            self.arch_config = teacher_config(base)
        except TypeError:
            self.arch_config = None
        self.fake = copy_net(base)
        lo = cfg.lora
        if lo.rank and lo.networks in ("both", "generator"):
            add_lora(self.G, lo)
        if lo.rank and lo.networks in ("both", "fake"):
            add_lora(self.fake, lo)
        self._ema_net = copy_net(self.G)  # the EMA itself is made once the networks are parallelized
        self.teacher_param_dtype = teacher_precision(cfg, self.traits, self.device)  # after the copies (fp32)
        if cfg.channels_last:  # 4-D weights only; activations follow the weights' layout
            for net in (self.teacher, self.G, self.fake, self._ema_net):
                if isinstance(net, torch.nn.Module):
                    net.to(memory_format=torch.channels_last)

    def _build_conditions(self) -> None:
        """A text-to-image teacher's training prompts (``prompts``), encoded once: the bank the
        training batches (and the pictures, in order) draw their conditions from."""
        cfg = self.cfg
        self.conditions = self.prompts_sha256 = None
        if not self.traits.text:
            if cfg.prompts:
                raise ConfigError(f"prompts={cfg.prompts} given, but the teacher is not a text-to-image pipeline")
            return
        if not cfg.prompts:
            raise ConfigError("a text-to-image teacher needs training prompts: prompts=FILE (one prompt a line, "
                              "or CSV / JSONL with a prompt column)")
        if cfg.method.name in ("sign", "ign"):
            raise ConfigError(f"method.name={cfg.method.name} is for pixel teachers; text-to-image teachers take "
                              f"sid, sim or dmd")
        cache = {"none": None, "auto": self.out_dir / "prompt_cache"}.get(cfg.prompt_cache, cfg.prompt_cache)
        log = print if self.main else (lambda msg: None)
        prompts = read_prompts(cfg.prompts)
        self.prompts_sha256 = prompts_sha256(prompts)
        self.conditions = ConditioningBank(encoded_prompts(self.teacher, prompts, cache, log))

    def _build_method(self) -> None:
        cfg = self.cfg
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        dev_type = self.device.type
        if cfg.precision == "bf16" and self.main and not bf16_is_fast(self.device):
            print(f"fastdistill: precision=bf16 on {self.device}, which has no native bf16 (emulated, usually "
                  f"slower than fp32): precision=fp32 is likely faster here", flush=True)
        if cfg.compile and dev_type == "cpu" and self.main:
            print(f"fastdistill: {COMPILE_ON_CPU}", flush=True)
        autocast = (lambda: torch.autocast(dev_type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        self.method = get_method(cfg.method.name, cfg.method, backend=cfg.method.backend,
                                 sigma_data=self.sigma_data, autocast=autocast,
                                 levels=noise_levels(cfg.method, self.traits),
                                 conditions=self.conditions)
        self.scaler = torch.amp.GradScaler(dev_type) if cfg.precision == "fp16" else None

    def _build_callables(self) -> None:
        """How the networks are called (:func:`parallelize`), then what is trained and the EMA."""
        self.par = parallelize(self.G, self.fake, self._ema_net, self.teacher, self.traits.network, self.cfg,
                               self.device, self.teacher_param_dtype)
        self.trainable = {"generator": trainable_parameters(self.G), "fake": trainable_parameters(self.fake)}
        self.ema = EMA(self.G, self._ema_net, self.trainable["generator"])
        del self._ema_net

    def whole_ema(self) -> Optional[torch.nn.Module]:
        """The EMA generator as one module on rank 0 (collective; None on the other ranks when sharded)."""
        return self.par.whole(self.ema.module)

    def _build_optimizers(self) -> None:
        cfg, o = self.cfg, self.cfg.optim
        eps = o.eps or (1e-6 if cfg.precision == "fp16" else 1e-8)
        self.opt_g = make_adam(self.trainable["generator"], o.lr, (o.beta1, o.beta2), eps, o.impl, self.device, o.weight_decay)
        self.opt_f = make_adam(self.trainable["fake"], o.fake_lr or o.lr, (o.beta1, o.beta2), eps, o.impl, self.device,
                               o.weight_decay)
        # noise generators (per rank, or shared for rng=global); real-data batches have their own CPU stream
        noise_seed = cfg.seed * 7919 + 17 + (0 if cfg.distributed.rng == "global" else 104729 * self.rank)
        self.gen = torch.Generator(device=self.device).manual_seed(noise_seed)
        self.data_gen = torch.Generator().manual_seed(noise_seed + 1)

    def _bind_method(self) -> None:
        """Hand the methods that declare ``needs`` their context (data, EMA, the raw generator)."""
        if not self.method.needs:
            return
        cfg = self.cfg
        self.method.bind(MethodContext(
            teacher=self.par.t_call, net=self.G, ema=self.ema.module,
            data=build_data(cfg, self.teacher, self.shape, self.label_dim) if "data" in self.method.needs else None,
            data_generator=self.data_gen, shape=tuple(self.shape), label_dim=self.label_dim,
            device=self.device, seed=cfg.seed, progress=cfg.progress and self.main))

    # ------------------------------------------------------------------ checkpoints
    @property
    def trained(self) -> Trained:
        return Trained({"generator": self.G, "fake": self.fake, "ema": self.ema.module},
                       {"generator": self.opt_g, "fake": self.opt_f})

    def _record(self) -> dict:
        """The run's facts for a checkpoint's state.json, beside what :class:`RunCheckpoints` adds."""
        return {"config": self.cfg.to_dict(), "images_seen": self.images_seen, "nan_steps": self.nan_steps,
                "consecutive_nan": self.consecutive_nan, "student": self.student_record(),
                "sigma_data": self.sigma_data, "init": self.init, "arch": self.arch, "arch_config": self.arch_config,
                "identity": self.identity, "config_changes": self.config_changes,
                "initial_quality": self.initial_quality,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def save(self) -> Optional[Path]:
        """Checkpoint (collective; the path on rank 0)."""
        with self.nvtx("checkpoint"):
            return self.checkpoints.save(self.step, self.trained, self._record, {"noise": self.gen, "data": self.data_gen})

    def student_record(self) -> dict:
        """What a trained student is, for ``fastdistill.student`` (checkpoints and exports carry it)."""
        t = self.cfg.teacher
        teacher = {"analytic": f"analytic:{t.name}", "checkpoint": t.path}.get(t.kind)
        kind = "text" if self.conditions is not None else "labels" if self.label_dim else "none"
        few = self.method.steps > 1
        return dict(method=self.cfg.method.name, sigma_init=self.method.sigma_init,
                    sigma_end=float(getattr(self.cfg.method, "sign_sigma_end", DEFAULT_SIGMA_END)),
                    step_sigmas=[float(v) for v in self.method.step_sigmas] if few else [],
                    data_shape=list(self.shape), label_dim=self.label_dim,
                    cond_kind=kind, teacher=teacher, step=self.step)

    def load(self, path: Path) -> None:
        tensors, state = self.checkpoints.read(path)
        self.config_changes = check_resume(path, state, self.cfg, self.identity, self.main)
        self.checkpoints.restore(path, tensors, state, self.trained, {"noise": self.gen, "data": self.data_gen})
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.nan_steps, self.consecutive_nan = int(state["nan_steps"]), int(state["consecutive_nan"])
        self.initial_quality = state.get("initial_quality")  # the generator before distillation, for the summary
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.resumed_from = str(path)
        if self.main:
            print(f"fastdistill: resuming from step {self.step} of {path.parent.parent}", flush=True)

    # ------------------------------------------------------------------ noise
    def _noises(self, kind: str):
        draw_noise = self.method.draw_fake_noise if kind == "fake" else self.method.draw_generator_noise
        if self.cfg.distributed.rng == "global":
            full = draw_noise(self.cfg.batch_size, self.shape, self.label_dim, self.gen, self.device)
            base = self.rank * self.per_rank
            return [_slice(full, base + m * self.micro, base + (m + 1) * self.micro)
                    for m in range(self.cfg.optim.grad_accum)]
        return [draw_noise(self.micro, self.shape, self.label_dim, self.gen, self.device)
                for _ in range(self.cfg.optim.grad_accum)]

    # ------------------------------------------------------------------ one iteration
    def _backward(self, loss):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _phase(self, kind: str, samples: Optional[list] = None, keep_samples: bool = False):
        """One fake or generator update. Returns (mean loss, non-finite samples, applied, kept):
        ``kept`` holds each generator micro-batch's detached samples and conditioning when
        ``keep_samples``; a fake update given ``samples`` fits those instead of fresh ones."""
        accum = self.cfg.optim.grad_accum
        self.par.reshard()
        if kind == "fake":
            self.G.eval()
            self.fake.train()
            set_trainable(self.G, None)
            set_trainable(self.fake, self.trainable["fake"])
            opt, params = self.opt_f, self.trainable["fake"]
        else:
            self.G.train()
            self.fake.eval()
            set_trainable(self.G, self.trainable["generator"])
            set_trainable(self.fake, None)
            opt, params = self.opt_g, self.trainable["generator"]
        opt.zero_grad(set_to_none=True)
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, non-finite samples, stop flag
        kept = []
        for m, noise in enumerate(self._noises(kind)):
            with self.par.no_sync(kind, m < accum - 1):
                if kind == "fake" and samples is not None:
                    x_g, cond = samples[m]
                    loss, nan = self.method.fake_loss(self.par.g_eval, self.par.f_train, dataclasses.replace(noise, cond=cond),
                                                      samples=x_g)
                elif kind == "fake":
                    loss, nan = self.method.fake_loss(self.par.g_eval, self.par.f_train, noise)
                elif keep_samples:
                    loss, nan, x_g = self.method.generator_loss_and_samples(self.par.g_train, self.par.t_call, self.par.f_frozen, noise)
                    kept.append((x_g, noise.cond))
                else:
                    loss, nan = self.method.generator_loss(self.par.g_train, self.par.t_call, self.par.f_frozen, noise)
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
            if self.cfg.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_mean, nan_samples, ok, kept

    def train_step(self) -> dict:
        if not self.method.uses_fake:  # e.g. IGN: no fake-score network
            with self.nvtx("generator_step"):
                loss_g, nan_g, ok_g, _ = self._phase("generator")
            loss_f, nan_f, ok_f = 0.0, 0, True
        elif self.method.reuses_samples:  # DMD2's order: the generator step, then the fake step on its samples
            with self.nvtx("generator_step"):
                loss_g, nan_g, ok_g, kept = self._phase("generator", keep_samples=True)
            with self.nvtx("fake_step"):
                loss_f, nan_f, ok_f, _ = self._phase("fake", samples=kept)
        else:
            with self.nvtx("fake_step"):
                loss_f, nan_f, ok_f, _ = self._phase("fake")
            with self.nvtx("generator_step"):
                loss_g, nan_g, ok_g, _ = self._phase("generator")
        for _ in range(self.cfg.optim.fake_steps - 1 if self.method.uses_fake else 0):  # DMD2's extra fake updates
            with self.nvtx("fake_step"):
                loss_f, nan_more, ok_more, _ = self._phase("fake")
            nan_f, ok_f = nan_f + nan_more, ok_f and ok_more
        self.par.reshard()
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
                good = self.checkpoints.last_good()
                raise TrainingDiverged(
                    f"stopping at step {self.step}: {self.consecutive_nan} consecutive non-finite steps "
                    f"({self.nan_steps} in total). Lower optim.lr, try precision=fp32, or check the teacher; "
                    + (f"the last good checkpoint is {good}" if good is not None
                       else f"no intact checkpoint in {ckpt.ckpt_root(self.out_dir)}"))
        return dict(loss_fake=loss_f, loss_gen=loss_g, nan_samples=nan_f + nan_g, ema_beta=beta,
                    skipped=int(not (ok_f and ok_g)), **self.method.log_terms())

    # ------------------------------------------------------------------ evaluation / pictures
    @torch.no_grad()
    def student_samples(self, n: int, seed: int, net=None, progress: bool = False) -> torch.Tensor:
        """``n`` samples of ``net`` (default: the EMA) in the generator's steps, from
        :func:`fastdistill.sampling.draw`, the draw ``fastdistill sample`` and ``eval`` use too, on the CPU;
        ``progress``: a bar over them."""
        net = net if net is not None else self.ema.module
        prompts = None if self.conditions is None else self.conditions.cond[torch.arange(n) % len(self.conditions)]
        (z, *renoise), cond = draw(n, self.shape, seed, label_dim=self.label_dim, cond=prompts, noises=self.method.steps)
        chain_eps = torch.stack(renoise, 1) if renoise else None
        was = net.training
        net.eval()
        out = []
        chunk = 1024
        bar = progress_bar(n, 0, progress, desc="final samples")
        for i in range(0, n, chunk):
            c = None if cond is None else cond[i:i + chunk].to(self.device)
            e = None if chain_eps is None else chain_eps[i:i + chunk].to(self.device)
            out.append(self.method.generate(net, z[i:i + chunk].to(self.device), c, e).cpu())
            if bar is not None:
                bar.update(len(out[-1]))
        if bar is not None:
            bar.close()
        net.train(was)
        return torch.cat(out)

    @torch.no_grad()
    def evaluate(self, net=None) -> Quality:
        """The student's quality now (``net``: default the EMA), with the run's baselines."""
        ev = self.evaluator
        return ev.quality(self.student_samples(ev.n, seed=9_000_003, net=net))

    def _picture_during_training(self, net) -> None:
        """``samples-<step>.png`` of ``net``; without the optional plotting library, said once and skipped."""
        if getattr(self, "_pictures_off", False):
            return
        try:
            self.save_picture(self.out_dir / f"samples-{self.step:08d}.png", net)
        except ImportError as exc:
            self._pictures_off = True
            print(f"fastdistill: pictures skipped: {exc}")

    def save_picture(self, path: Path, net=None) -> Path:
        """A grid of samples of ``net`` (default: the EMA; decoded by the VAE for latent
        teachers; for text teachers the first training prompts in turn), or for vector data a
        scatter beside data and teacher."""
        if self.traits.decodes:
            return image_grid(self.teacher.decode(self.student_samples(16, seed=9_000_004, net=net)), path)
        if len(self.shape) == 3:
            return image_grid(self.student_samples(64, seed=9_000_004, net=net), path)
        x = self.student_samples(min(self.cfg.eval_samples, 2000), seed=9_000_004, net=net)
        panels = []
        if self.evaluator is not None:
            self.evaluator.quality()
            panels = [("data", self.evaluator.data[:2000]), ("teacher (Heun, 35 evals)", self.evaluator.teacher_x[:2000])]
        k = self.method.steps
        panels.append((f"student ({k} step{'s' if k > 1 else ''}, step {self.step})", x))
        return scatter_panels(panels, path)

    def _device_peak(self) -> float:
        """FLOP/s of a dense matmul and convolution on this rank's device in the run's compute
        format (fp32 where bf16 would be emulated: its peak there is not what bf16 hardware does)."""
        bf16 = self.cfg.precision == "bf16" and bf16_is_fast(self.device)
        dtype = {"fp16": torch.float16}.get(self.cfg.precision, torch.bfloat16 if bf16 else torch.float32)
        peak = dense_yardstick(self.device, dtype)["peak"]
        print(f"fastdistill: the device's dense {str(dtype).removeprefix('torch.')} peak: {peak / 1e12:.3g} TFLOP/s "
              f"(the log's mfu divides by it)", flush=True)
        return peak

    def final_sample_count(self) -> int:
        """How many samples the finished run writes to samples.npz (``final_samples``)."""
        n = self.cfg.final_samples
        if n == -1:
            return min(self.cfg.eval_samples, 4096) if self.evaluator is not None else 0
        return n

    def describe(self) -> str:
        """One line of what the run detected and set up: the teacher's family and objective, the data
        shape, the teacher's dtype, what trains, the processes."""
        t, cfg = self.traits, self.cfg
        teacher = t.family or type(self.teacher).__name__
        dtype = next((p.dtype for p in (t.network or self.teacher).parameters()), torch.float32)

        def count(n: int) -> str:
            return next((f"{n / scale:.3g}{unit}" for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if n >= scale),
                        str(n))

        def trained(net, name):
            total = sum(p.numel() for p in net.parameters())
            return f"{name} {count(sum(p.numel() for p in self.trainable[name]))} of {count(total)} parameters trained"

        lora = f", LoRA rank {cfg.lora.rank} ({cfg.lora.networks})" if cfg.lora.rank else ""
        procs = f"{self.world} ranks, {cfg.distributed.strategy}" if self.world > 1 else "1 process"
        return (f"{cfg.method.name} ({self.method.steps} step{'s' if self.method.steps > 1 else ''}) of a {teacher} "
                f"teacher ({t.objective}, {str(dtype).removeprefix('torch.')}), data {tuple(self.shape)}; "
                f"{trained(self.G, 'generator')}, {trained(self.fake, 'fake')}{lora}; {procs} on {self.device}, "
                f"precision {cfg.precision}")

    def _write_final_outputs(self, whole) -> Optional[str]:
        """student.safetensors and, where asked for, samples.npz of the finished run (the samples' path)."""
        self.export_student(self.out_dir / "student.safetensors", whole)
        n = self.final_sample_count()
        if not n:
            return None
        x = self.student_samples(n, seed=9_000_005, net=whole, progress=self.cfg.progress)
        samples = str(self.out_dir / "samples.npz")
        np.savez(samples, samples=x.numpy())
        return samples

    def export_student(self, path: Path, net=None) -> Optional[Path]:
        """The EMA generator's denoiser (or ``net``) in the teacher checkpoint format (``load_teacher``
        reads it); the generator is ``D(sigma_init z; sigma_init)``, and its further steps' levels are in the
        student record. Skipped for unregistered classes."""
        if self.arch_config is None:
            return None
        from ..teachers.checkpoint import save_teacher

        save_teacher(self.ema.module if net is None else net, path, extra={"student": self.student_record()})
        return path

    # ------------------------------------------------------------------ the loop
    def request_stop(self, hint: str = RESUME_HINT) -> None:
        """Checkpoint after the current step and return from :meth:`run` (what Ctrl-C does);
        ``hint`` is printed with the step, e.g. how to continue the run."""
        self._stop = True
        self._stop_hint = hint

    def _install_signal_handlers(self) -> dict:
        """SIGINT (Ctrl-C), SIGTERM (what schedulers send before killing a job) and SIGUSR1 (sent
        by some before a time limit) checkpoint after the current step and stop the run; a second
        signal exits at once. Returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        prev = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def handler(signum, frame):
            if self._stop:  # the second signal: give up at once
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self.stop_signal = signum
            self.request_stop()
            if self.main:
                print(f"\nfastdistill: {signal.Signals(signum).name} received; checkpointing after this step "
                      f"(a second one aborts at once)", flush=True)

        for s in STOP_SIGNALS:
            signal.signal(s, handler)
        return prev

    def _logger(self) -> MetricsLogger:
        lg = self.cfg.log
        return MetricsLogger(self.out_dir, enabled=self.main, tensorboard={"true": True, "false": False}.get(lg.tensorboard, "auto"),
                             wandb=lg.wandb, wandb_project=lg.wandb_project, run_name=self.out_dir.name,
                             config=self.cfg.to_dict())

    def run(self) -> DistillResult:
        cfg = self.cfg
        if self.step > cfg.steps:  # a resumed run already past the requested length: touch nothing
            self._restore_process()
            self.release()
            raise ConfigError(f"the run in {cfg.out_dir} is already at step {self.step}, past steps={cfg.steps}: "
                              f"nothing was trained (raise steps= to continue it, or start a new run in another out_dir)")
        t0 = time.time()
        try:
            logger = self._logger()
        except BaseException:
            self._restore_process()
            self.release()
            raise
        if self.main:
            (self.out_dir / "config.json").write_text(cfg.to_json())
        prev = self._install_signal_handlers()
        bar = progress_bar(cfg.steps, self.step, cfg.progress and self.main)
        last_ckpt = None
        quality: Optional[Quality] = None
        interrupted = False
        try:
            if self.evaluator is not None and self.step == 0:
                first = self.evaluate(net=self.G)
                self.initial_quality, first.initial, first.student = first.student, first.student, None
                quality = first
                logger.log(step=0, kimg=0.0, **first.log_row())
            peak = self._device_peak() if cfg.log.mfu and self.main else None
            step_flops = None
            tick, tick_step = time.time(), self.step
            while self.step < cfg.steps:
                if peak is not None and step_flops is None:  # this rank's FLOPs of one step, counted once
                    step_flops, row = count_flops(self.train_step)
                else:
                    row = self.train_step()
                if bar is not None:
                    bar.update(1)
                if self.callback is not None:
                    self.callback(self, row)
                last = self.step == cfg.steps
                if self.main and (self.step % max(cfg.log_every, 1) == 0 or last):
                    now = time.time()
                    steps_per_s = (self.step - tick_step) / max(now - tick, 1e-9)
                    rate = steps_per_s * cfg.batch_size
                    tick, tick_step = now, self.step
                    rec = dict(step=self.step, kimg=self.images_seen / 1000, img_per_s=rate, nan_steps=self.nan_steps, **row)
                    if step_flops:
                        rec.update(tflop_s=step_flops * steps_per_s / 1e12, mfu=step_flops * steps_per_s / peak)
                    if self.evaluator is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                        quality = self.evaluate()
                        quality.initial = self.initial_quality
                        rec.update({k: v for k, v in quality.log_row().items() if not k.endswith("_initial")})
                    logger.log(**rec)
                    self.history.append(rec)
                    if bar is not None:
                        post = dict(gen=f"{row['loss_gen']:.3g}", fake=f"{row['loss_fake']:.3g}", img_s=f"{rate:.3g}")
                        if quality is not None and quality.student is not None:
                            post[quality.metric] = f"{quality.student:.4g}"
                        bar.set_postfix(post)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    whole = self.whole_ema()
                    if self.main:
                        self._picture_during_training(whole)
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
            for s, h in prev.items():
                signal.signal(s, h)
            self._restore_process()
            self.release()
        trained_s, picture, samples = time.time() - t0, None, None
        whole = None if interrupted else self.whole_ema()
        if self.main and not interrupted:
            try:
                samples = self._write_final_outputs(whole)
            except OSError as exc:  # a full or read-only disk: the trained run is safe in its checkpoint
                raise OSError(exc.errno, f"{exc.filename or self.out_dir}: {exc.strerror or exc} while writing the "
                                         f"final outputs; the trained run is safe in {last_ckpt}: free space and run "
                                         f"the same command again to write them (nothing is retrained)") from exc
            try:  # pictures last: a missing optional plotting library loses nothing else
                picture = str(self.save_picture(self.out_dir / "samples.png", whole))
                if quality is not None:
                    k = self.method.steps
                    plot_run_curve(self.out_dir, f"{cfg.method.name} ({k} step{'s' if k > 1 else ''})")
            except ImportError as exc:
                print(f"fastdistill: pictures skipped: {exc}")
        return DistillResult(out_dir=str(self.out_dir), step=self.step, images_seen=self.images_seen,
                             checkpoint=str(last_ckpt) if last_ckpt else None, elapsed_s=trained_s,
                             nan_steps=self.nan_steps, interrupted=interrupted, quality=quality,
                             picture=picture, samples=samples, stop_signal=self.stop_signal if interrupted else None,
                             final_s=time.time() - t0 - trained_s)


def run_distillation(config=None, teacher=None, overrides=None, callback=None,
                     init_network: Optional[torch.nn.Module] = None) -> DistillResult:
    """Distil a teacher into a one-step (or few-step) generator.

    config: a :class:`DistillConfig`, a dict, a path to a JSON/TOML file, a preset name, or
    None for the default toy preset. overrides: ``["optim.lr=1e-4", ...]``. teacher: a Denoiser
    object (with ``teacher.kind=network``, or to replace the configured one).
    """
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
