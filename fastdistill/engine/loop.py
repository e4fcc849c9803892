"""The training loop: one loop for every method and every Denoiser teacher.

One iteration = one fake-score (DSM) update, then one generator update, each on a fresh
``z`` (docs/algorithms.md section 1), then ``optim.fake_steps - 1`` further fake updates
(DMD2's update ratio), then the generator EMA. With ``method.reuse_samples``
(DMD's default, DMD2's recipe) the generator update comes first and the fake update fits its
samples. The :class:`Distiller` composes its collaborators: the process (:mod:`.process`), the
networks (:mod:`.build`, :func:`parallelize`), the updates (:mod:`.updates`), checkpoints
(:mod:`.run_checkpoints`) and the student's outputs (:mod:`.outputs`). Entry point:
:func:`run_distillation`.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..methods import ConfigError, MethodContext, get_method, noise_levels
from ..teachers.prompt_cache import prompt_bank
from . import checkpoint as ckpt
from ..teachers.traits import traits
from .build import autocast_for, bf16_is_fast, build_data, build_students, build_teacher
from .config import DistillConfig, preset_config
from .ema import EMA, ema_beta
from .evaluator import LoopEvaluator, Quality, plot_run_curve
from .identity import architecture_of, as_recorded, check_resume, run_identity
from .lora import trainable_parameters
from .monitor import NVTX, MetricsLogger, progress_bar
from .outputs import StudentOutputs
from .parallel import parallelize, shards_networks
from .process import RESUME_HINT, RunFolder, RunProcess, Stop
from .prompts import prompt_cache_dir, prompts_sha256, training_prompts
from .run_checkpoints import RunCheckpoints, Trained
from .run_state import RunState, StudentInfo
from .throughput import StepRate, dense_yardstick
from .updates import Updates


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


class Distiller:
    """Holds the networks, optimisers and state of one run. ``Distiller(cfg).run()``."""

    def __init__(self, cfg: DistillConfig, teacher=None, callback: Optional[Callable] = None,
                 init_network: Optional[torch.nn.Module] = None):
        self.cfg = cfg = cfg.validate()
        self.callback = callback
        self.process = RunProcess(cfg)
        self.device, self.rank, self.world, self.main = (self.process.device, self.process.rank, self.process.world,
                                                         self.process.main)
        self.out_dir = Path(cfg.out_dir)
        self.folder = RunFolder(self.out_dir, cfg.force, self.main)
        try:
            self.checkpoints = RunCheckpoints(self.out_dir, cfg.keep_last, sharded=shards_networks(cfg),
                                              main=self.main, rank=self.rank, world=self.world)
            self.resume_path = self.checkpoints.find(cfg.resume)
            resumed = self.checkpoints.read(self.resume_path) if self.resume_path is not None else None
            if resumed is not None:  # settings added since the checkpoint was written: as its run had them
                self.cfg = cfg = as_recorded(cfg, resumed[1].config)
            self._seed_global_rngs()
            self.step = self.images_seen = self.nan_steps = self.consecutive_nan = 0
            self.stop = Stop()
            self.history: list[dict] = []
            self.initial_quality: Optional[float] = None
            self.config_changes: list[dict] = []
            self._build(teacher, init_network, resumed)
            if self.main:
                print(f"fastdistill: {self.describe()}", flush=True)
            if resumed is not None:  # continue the run from its checkpoint (read and checked by _build)
                tensors, state = resumed
                self.checkpoints.restore(self.resume_path, tensors, state, self.trained, self.updates.generators)
                self.step, self.images_seen = state.step, int(state.images_seen)
                self.nan_steps, self.consecutive_nan = int(state.nan_steps), int(state.consecutive_nan)
                self.initial_quality = state.initial_quality  # the generator before distillation, for the summary
                self.resumed_from = str(self.resume_path)
                if self.main:
                    print(f"fastdistill: resuming from step {self.step} of {self.resume_path.parent.parent}", flush=True)
        except BaseException:
            self.release()
            self.folder.remove_if_empty()
            raise

    # ------------------------------------------------------------------ set-up, in order
    def _seed_global_rngs(self) -> None:
        seed = self.cfg.seed + 1000 * self.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _build(self, teacher, init_network, resumed) -> None:
        """In this order: the frozen teacher and its prompt bank, the method, the generator, fake
        network and EMA copy, the run's identity (checked against ``resumed``), how the networks are
        called (:func:`parallelize`), the updates, the method's context and the student's outputs."""
        cfg, say = self.cfg, ((lambda msg: print(msg, flush=True)) if self.main else (lambda msg: None))
        prompts = training_prompts(cfg)  # read and checked before a teacher is loaded
        autocast = autocast_for(cfg, self.device, say)
        self.teacher = build_teacher(cfg, teacher, self.device)
        self.traits = t = traits(self.teacher)
        if cfg.teacher.family and t.family != cfg.teacher.family:
            say(f"fastdistill: warning: this recipe was made for {cfg.teacher.family} teachers (its timesteps, guidance "
                f"and learning rates), the teacher is {t.family or 'not a pipeline'}: check them (teacher.family= "
                f"silences this)")
        if bool(prompts) != t.text:
            raise ConfigError(f"prompts={cfg.prompts} given, but the teacher is not a text-to-image pipeline" if prompts
                              else "a text-to-image teacher needs training prompts: prompts=FILE (one prompt a line, "
                                   "or CSV / JSONL with a prompt column)")
        self.conditions = prompt_bank(self.teacher, prompts, prompt_cache_dir(cfg, self.out_dir), say) if prompts else None
        self.shape, self.label_dim, self.sigma_data = t.data_shape, t.label_dim, t.sigma_data
        self.method = get_method(cfg.method.name, cfg.method, backend=cfg.method.backend, sigma_data=t.sigma_data,
                                 autocast=autocast, levels=noise_levels(cfg.method, t), conditions=self.conditions)
        data = build_data(cfg, self.teacher, t) if "data" in self.method.needs else None
        students = build_students(cfg, self.teacher, t, init_network, self.device, fit=resumed is None,
                                  progress=cfg.progress and self.main)
        self.G, self.fake = students.generator, students.fake
        self.init, self.arch, self.arch_config = students.init, students.arch, students.arch_config
        self.from_teacher = students.from_teacher
        self.identity = run_identity(cfg, self.teacher, architecture_of(self.G, self.arch_config or self.arch),
                                     prompts_sha256(prompts) if prompts else None)
        if resumed is not None:
            self.config_changes = check_resume(self.resume_path, resumed[1], cfg, self.identity, self.main)
        self.method_modules = self.method.modules(self.fake)
        if set(self.method_modules) & {"generator", "fake", "ema", "optim"}:
            raise ConfigError(f"method {cfg.method.name} names its own modules {sorted(self.method_modules)}: "
                              f"generator, fake, ema and optim are the run's")
        self.par = parallelize(self.G, self.fake, students.ema, self.teacher, t, cfg, self.device, self.method_modules)
        self.trainable = {"generator": trainable_parameters(self.G), "fake": trainable_parameters(self.fake)}
        self.ema = EMA(self.G, students.ema, self.trainable["generator"])
        self.nvtx = NVTX(cfg.nvtx)
        self.updates = Updates(cfg, self.method, self.par, {"generator": self.G, "fake": self.fake}, self.trainable,
                               self.shape, self.label_dim, self.process, self.nvtx)
        if self.method.needs:  # the methods that declare ``needs`` get their context (data, EMA, the raw generator)
            self.method.bind(MethodContext(
                teacher=self.par.t_call, net=self.G, ema=self.ema.module, data=data,
                data_generator=self.updates.data_gen, shape=tuple(self.shape), label_dim=self.label_dim,
                device=self.device, seed=cfg.seed, progress=cfg.progress and self.main))
        evaluator = LoopEvaluator.for_run(cfg, self.teacher, t) if self.main else None
        self.par.check_evaluation(evaluator is not None)
        self.outputs = StudentOutputs(cfg, self.method, self.teacher, t, self.conditions, evaluator,
                                      self.ema.module, self.arch_config, self.device, self.out_dir)

    @property
    def evaluator(self) -> Optional[LoopEvaluator]:
        return self.outputs.evaluator

    def describe(self) -> str:
        """One line of what the run detected and set up: the teacher's family and objective, the data
        shape, the teacher's dtype, what trains, the processes."""
        t, cfg = self.traits, self.cfg
        dtype = next((p.dtype for p in (t.network or self.teacher).parameters()), torch.float32)

        def trained(net, name):
            total = sum(p.numel() for p in net.parameters())
            return f"{name} {_count(sum(p.numel() for p in self.trainable[name]))} of {_count(total)} parameters trained"

        shared = ", on the teacher's weights" if self.from_teacher else ""
        lora = f", LoRA rank {cfg.lora.rank} ({cfg.lora.networks}){shared}" if cfg.lora.rank else ""
        own = "".join(f", {name} {_count(sum(p.numel() for p in m.parameters()))} parameters"
                      for name, m in self.method_modules.items())
        procs = f"{self.world} ranks, {cfg.distributed.strategy}" if self.world > 1 else "1 process"
        return (f"{cfg.method.name} ({_steps(self.method.steps)}) of a {t.family or type(self.teacher).__name__} "
                f"teacher ({t.objective}, {str(dtype).removeprefix('torch.')}), data {tuple(self.shape)}; "
                f"{trained(self.G, 'generator')}, {trained(self.fake, 'fake')}{lora}{own}; {procs} on {self.device}, "
                f"precision {cfg.precision}")

    def release(self) -> None:
        """Give the run directory back (the end of :meth:`run` does this; also when the object goes)."""
        self.folder.release()

    def whole_ema(self) -> Optional[torch.nn.Module]:
        """The EMA generator as one module on rank 0 (collective; None on the other ranks when sharded)."""
        return self.par.whole(self.ema.module)

    # ------------------------------------------------------------------ checkpoints
    @property
    def trained(self) -> Trained:
        return Trained({"generator": self.G, "fake": self.fake, "ema": self.ema.module, **self.method_modules},
                       self.updates.optimizers, self.updates.scaler, self.from_teacher)

    def _record(self) -> RunState:
        """The run's state for a checkpoint, less what :class:`RunCheckpoints` fills in."""
        return RunState(step=self.step, config=self.cfg.to_dict(), student=self.student_info(),
                        images_seen=self.images_seen, nan_steps=self.nan_steps, consecutive_nan=self.consecutive_nan,
                        sigma_data=self.sigma_data, init=self.init, arch=self.arch, arch_config=self.arch_config,
                        identity=self.identity, config_changes=self.config_changes,
                        initial_quality=self.initial_quality)

    def save(self) -> Optional[Path]:
        """Checkpoint (collective; the path on rank 0)."""
        with self.nvtx("checkpoint"):
            return self.checkpoints.save(self.step, self.trained, self._record, self.updates.generators)

    def student_info(self) -> StudentInfo:
        """What the trained student is now (``fastdistill.student``; checkpoints and exports carry it)."""
        return self.outputs.info(self.step)

    # ------------------------------------------------------------------ one iteration
    def train_step(self) -> dict:
        row = self.updates.iteration(self.stop)
        ok = row.pop("ok")
        with self.nvtx("ema"):
            beta = ema_beta(self.cfg.batch_size, self.images_seen, self.cfg.ema.halflife_kimg, self.cfg.ema.rampup)
            self.ema.update(beta)
        self.images_seen += self.cfg.batch_size
        self.step += 1
        if ok:
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
        return dict(**row, ema_beta=beta, skipped=int(not ok), **self.method.log_terms())

    def student_samples(self, n: int, seed: int, net=None, progress: bool = False) -> torch.Tensor:
        """``n`` samples of ``net`` (default: the EMA), as ``fastdistill sample`` draws them."""
        return self.outputs.samples(n, seed, net, progress)

    # ------------------------------------------------------------------ the loop
    def request_stop(self, hint: str = RESUME_HINT) -> None:
        """Checkpoint after the current step and return from :meth:`run` (what Ctrl-C does);
        ``hint`` is printed with the step, e.g. how to continue the run."""
        self.stop.request(hint)

    def _end_process(self) -> None:
        self.process.restore()
        self.release()

    def run(self) -> DistillResult:
        cfg = self.cfg
        if self.step > cfg.steps:  # a resumed run already past the requested length: touch nothing
            self._end_process()
            raise ConfigError(f"the run in {cfg.out_dir} is already at step {self.step}, past steps={cfg.steps}: "
                              f"nothing was trained (raise steps= to continue it, or start a new run in another out_dir)")
        t0 = time.time()
        try:
            lg = cfg.log
            logger = MetricsLogger(self.out_dir, enabled=self.main, wandb=lg.wandb, wandb_project=lg.wandb_project,
                                   tensorboard={"true": True, "false": False}.get(lg.tensorboard, "auto"),
                                   run_name=self.out_dir.name, config=cfg.to_dict())
        except BaseException:
            self._end_process()
            raise
        if self.main:
            (self.out_dir / "config.json").write_text(cfg.to_json())
        bar = progress_bar(cfg.steps, self.step, cfg.progress and self.main)
        try:
            with self.stop.signals_handled(self.main):
                last_ckpt, quality, interrupted = self._train(logger, bar)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
            self._end_process()
        trained_s = time.time() - t0
        picture, samples = (None, None) if interrupted else self._finish(last_ckpt, quality)
        return DistillResult(out_dir=str(self.out_dir), step=self.step, images_seen=self.images_seen,
                             checkpoint=str(last_ckpt) if last_ckpt else None, elapsed_s=trained_s,
                             nan_steps=self.nan_steps, interrupted=interrupted, quality=quality,
                             picture=picture, samples=samples, stop_signal=self.stop.signal if interrupted else None,
                             final_s=time.time() - t0 - trained_s)

    def _train(self, logger: MetricsLogger, bar) -> tuple[Optional[Path], Optional[Quality], bool]:
        """The steps up to ``steps``, with their logs, pictures and checkpoints; returns the last
        checkpoint, the last quality and whether a stop request ended the run early."""
        cfg, quality, last_ckpt = self.cfg, None, None
        if self.evaluator is not None and self.step == 0:
            quality = self.outputs.quality(net=self.G)
            self.initial_quality, quality.initial, quality.student = quality.student, quality.student, None
            logger.log(step=0, kimg=0.0, **quality.log_row())
        rate = StepRate(cfg.batch_size, self.step, _device_peak(cfg, self.device) if cfg.log.mfu and self.main else None)
        while self.step < cfg.steps:
            row = rate.run(self.train_step)
            if bar is not None:
                bar.update(1)
            if self.callback is not None:
                self.callback(self, row)
            last = self.step == cfg.steps
            if self.main and (self.step % max(cfg.log_every, 1) == 0 or last):
                quality = self._log(logger, bar, row, rate, quality, last)
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                whole = self.whole_ema()
                if self.main:
                    self.outputs.picture_during_training(self.step, whole)
            if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last:
                last_ckpt = self.save()
            if self.stop.requested and not last:
                last_ckpt = self.save()
                if self.main:
                    print(f"fastdistill: stopped at step {self.step}; {self.stop.hint}", flush=True)
                return last_ckpt, quality, True
        if self.step >= cfg.steps and last_ckpt is None and cfg.steps > 0 and self.main:
            last_ckpt = ckpt.latest_checkpoint(self.out_dir)
        return last_ckpt, quality, False

    def _log(self, logger: MetricsLogger, bar, row: dict, rate: StepRate, quality: Optional[Quality],
             last: bool) -> Optional[Quality]:
        """One row of metrics.jsonl (with an evaluation when one is due) and the bar's figures."""
        cfg = self.cfg
        speed = rate.columns(self.step)
        rec = dict(step=self.step, kimg=self.images_seen / 1000, img_per_s=speed.pop("img_per_s"),
                   nan_steps=self.nan_steps, **row, **speed)
        if self.evaluator is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
            quality = self.outputs.quality()
            quality.initial = self.initial_quality
            rec.update({k: v for k, v in quality.log_row().items() if not k.endswith("_initial")})
        logger.log(**rec)
        self.history.append(rec)
        if bar is not None:
            post = dict(gen=f"{row['loss_gen']:.3g}", fake=f"{row['loss_fake']:.3g}", img_s=f"{rec['img_per_s']:.3g}")
            if quality is not None and quality.student is not None:
                post[quality.metric] = f"{quality.student:.4g}"
            bar.set_postfix(post)
        return quality

    def _finish(self, last_ckpt: Optional[Path], quality: Optional[Quality]) -> tuple[Optional[str], Optional[str]]:
        """The finished run's outputs on rank 0: the student, samples.npz, pictures and the curve."""
        whole = self.whole_ema()
        if not self.main:
            return None, None
        try:
            samples = self.outputs.write_final(self.step, whole)
        except OSError as exc:  # a full or read-only disk: the trained run is safe in its checkpoint
            raise OSError(exc.errno, f"{exc.filename or self.out_dir}: {exc.strerror or exc} while writing the "
                                     f"final outputs; the trained run is safe in {last_ckpt}: free space and run "
                                     f"the same command again to write them (nothing is retrained)") from exc
        try:  # pictures last: a missing optional plotting library loses nothing else
            picture = str(self.outputs.picture(self.out_dir / "samples.png", self.step, whole))
            if quality is not None:
                plot_run_curve(self.out_dir, f"{self.cfg.method.name} ({_steps(self.method.steps)})")
        except ImportError as exc:
            print(f"fastdistill: pictures skipped: {exc}")
            picture = None
        return picture, samples


def _steps(k: int) -> str:
    return f"{k} step{'s' if k > 1 else ''}"


def _count(n: int) -> str:
    return next((f"{n / scale:.3g}{unit}" for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if n >= scale), str(n))


def _device_peak(cfg, device: torch.device) -> float:
    """FLOP/s of a dense matmul and convolution on this rank's device in the run's compute format
    (fp32 where bf16 would be emulated: its peak there is not what bf16 hardware does)."""
    bf16 = cfg.precision == "bf16" and bf16_is_fast(device)
    dtype = {"fp16": torch.float16}.get(cfg.precision, torch.bfloat16 if bf16 else torch.float32)
    peak = dense_yardstick(device, dtype)["peak"]
    print(f"fastdistill: the device's dense {str(dtype).removeprefix('torch.')} peak: {peak / 1e12:.3g} TFLOP/s "
          f"(the log's mfu divides by it)", flush=True)
    return peak


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
