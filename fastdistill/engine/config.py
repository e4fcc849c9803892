"""Distillation configuration: nested dataclasses, validation, dotted overrides.

Every hyper-parameter has the official SiD default (docs/algorithms.md section 7). The
``method`` section is the chosen method's own config class (``fastdistill.methods``):
``method.name=sim`` switches it, keeping the options all methods share.
``DistillConfig.from_dict`` / ``from_file`` (JSON or TOML) / ``with_overrides(["optim.lr=1e-4"])``
reject unknown keys with the list of valid ones, and :meth:`DistillConfig.validate` turns
out-of-range values into clear errors before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import json
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional, get_type_hints

from ..methods import ConfigError, MethodConfig, available_methods, method_config
from ..methods.base import check as need, check_choice as choice, check_positive as positive

COMPILE_SCOPES = ("regional", "full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the named presets, filled by :mod:`fastdistill.engine.presets` (which the engine package imports)
PRESETS: dict[str, Callable[[], "DistillConfig"]] = {}


@dataclass
class TeacherConfig:
    """Where the teacher comes from and what the generator / fake network start as."""

    kind: str = "analytic"  # analytic (exact Gaussian-mixture denoiser) | checkpoint (load_teacher(path)) | network (a Denoiser object passed in Python)
    name: str = "8gaussians"  # analytic teacher, named like its dataset: 8gaussians | 25gaussians | gaussian | ringN
    path: str = ""  # kind=checkpoint: "digits" (shipped), an EDM pickle, a fastdistill .safetensors or a diffusers folder
    dtype: str = "auto"  # the frozen teacher's network: auto (bf16 for text-to-image pipelines on a device with native bf16: CUDA, AVX512-BF16 / AMX CPUs; else fp32) | fp32 | bf16 (diffusers teachers; halves its memory; the trained copies start from its fp32 weights and stay fp32)
    resolution: int = 0  # text-to-image pipelines: the image side in pixels, a multiple of the VAE's factor (0 = the pipeline's own)
    embedded_guidance: float = 0.0  # guidance-distilled pipelines (FLUX.1-dev): the guidance value fed to the network (0 = the pipeline's default, 3.5)
    family: str = ""  # the pipeline family a preset's recipe was made for (its timesteps, guidance, learning rates): a teacher of another family gets a warning; "" = any
    init: str = "auto"  # teacher: generator/fake/EMA are copies of the teacher | fit: an MLP fitted to the teacher's denoiser (needed for analytic teachers) | auto
    mlp_hidden: int = 128  # width of the fitted MLP (init=fit)
    mlp_layers: int = 3  # hidden layers of the fitted MLP
    fit_steps: int = 2000  # denoiser-regression steps for init=fit
    fit_batch: int = 512
    fit_lr: float = 2e-3


@dataclass
class OptimConfig:
    lr: float = 1e-5  # generator learning rate (constant)
    fake_lr: float = 0.0  # fake-network learning rate; 0 = same as lr
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 0.0  # 0 = 1e-8 (1e-6 with fp16)
    impl: str = "auto"  # auto (fused where supported, else foreach) | fused | foreach | plain
    grad_accum: int = 1  # micro-batches per step (per rank)
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay of both networks; 0 = Adam (SiD); DMD2 uses 0.01
    clip_grad: float = 0.0  # clip each network's gradient norm to this after sanitising (DMD2: 10); 0 = off
    fake_steps: int = 1  # fake-network updates per generator update (DMD2: 10); the extra ones fit fresh samples


@dataclass
class EMAConfig:
    halflife_kimg: float = 500.0  # generator EMA half-life in thousands of images
    rampup: float = 0.05  # half-life = min(halflife, rampup * images seen); 0 disables ramp-up


@dataclass
class DistributedConfig:
    strategy: str = "ddp"  # ddp: generator and fake network replicated (DDP) | fsdp: FSDP2 shards generator, fake network, EMA, teacher and Adam states over the ranks; checkpoints sharded (torch.distributed.checkpoint)
    fsdp_teacher: bool = False  # strategy=ddp: shard the frozen teacher with FSDP2 too (strategy=fsdp always does)
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    rng: str = "rank"  # rank: per-rank seeded noise | global: every rank draws the global batch and keeps its slice (layout-independent, for equivalence checks)


@dataclass
class LogConfig:
    tensorboard: str = "auto"  # TensorBoard event files in <out_dir>/tensorboard: auto (when tensorboard is installed) | true | false
    wandb: bool = False  # also log to Weights & Biases (needs wandb; WANDB_MODE=offline works)
    wandb_project: str = "fastdistill"  # wandb project name
    mfu: bool = False  # model FLOP utilisation in the log: the first step's matmul/conv FLOPs counted, the device's peak from a dense matmul/conv timed at the start (a few seconds); rows get tflop_s and mfu (the counted step may differ from an uncounted one by rounding)


@dataclass
class LoRAConfig:
    rank: int = 0  # 0 = full fine-tuning; > 0: LoRA adapters of this rank (peft) on the networks below, only they train
    alpha: float = 0.0  # LoRA scale numerator (scale = alpha / rank); 0 = rank (scale 1)
    targets: str = "to_q,to_k,to_v,to_out.0"  # comma-separated module names (name endings) that get adapters: diffusers' attention projections
    networks: str = "both"  # both | generator | fake: which trained networks get adapters (the other is fully fine-tuned)
    dropout: float = 0.0  # LoRA dropout
    share_base: bool = True  # the LoRA networks hold the teacher's frozen weights themselves (one copy, in the teacher's dtype), not copies


@dataclass
class DistillConfig:
    """Everything one distillation run needs."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    method: MethodConfig = field(default_factory=method_config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: str = ""  # real data for methods that use it (sign, ign): a load_dataset name or path; "" = the analytic teacher's exact samples, else (sign) a bank of teacher samples
    prompts: str = ""  # text-to-image teachers: the training prompts, a text file (one a line), CSV or JSONL
    prompt_cache: str = "auto"  # where encoded prompts are cached (safetensors, keyed by the text encoders and prompts): auto = <out_dir>/prompt_cache | none | a directory shared by runs
    out_dir: str = "runs/distill"
    seed: int = 0
    batch_size: int = 256  # global batch (all ranks, all micro-batches)
    steps: int = 1000  # iterations; one = one fake step + one generator step
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | tf32 (fp32 with TF32 matmuls on CUDA) | bf16 | fp16 (autocast of the network forwards; fp32 master weights)
    compile: bool = False  # torch.compile the networks
    compile_scope: str = "full"  # full: whole networks | regional: each repeated block compiled once per shape, shared by all networks (docs/performance.md: which pays where)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs; CUDA only) | max-autotune | max-autotune-no-cudagraphs
    channels_last: bool = False  # convolution networks in NHWC memory format (faster convolutions on most GPUs; none here on CPU)
    activation_checkpointing: bool = False  # recompute activations in backward: diffusers UNets block by block (all three networks), other networks as one call (generator, fake)
    threads: int = 0  # torch CPU threads; 0 = leave as is
    resume: str = "auto"  # auto (latest checkpoint in out_dir) | none (a new run; refused where checkpoints exist) | <checkpoint dir>
    allow_config_change: bool = False  # resume with changed settings beyond the free ones (lr, batch size, ...); recorded in the checkpoints
    force: bool = False  # take over a run directory locked from another host
    ckpt_every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_last: int = 3  # checkpoints kept
    log_every: int = 50  # steps between JSONL metric lines
    sample_every: int = 0  # steps between sample pictures (0 = only at the end)
    eval_every: int = 0  # steps between quality evaluations (0 = start and end): SW2 on vector data, FID on images with eval data
    eval_samples: int = 4096  # samples per quality evaluation (images: capped at the held-out half of the data, 898 on digits)
    final_samples: int = -1  # samples.npz of the finished student: -1 = auto (eval_samples, at most 4096, where the run evaluates quality; else none) | 0 = none | N
    eval_cache: str = ""  # directory caching the teacher's evaluation samples between runs ("" = in this process only)
    eval_data: str = ""  # images: reference data for FID tracking (digits features); "" = `data`, else digits for the digits teacher; "none" = off (vector data too)
    max_nan_steps: int = 20  # stop after this many consecutive non-finite steps
    max_nan_fraction: float = 0.5  # a step whose loss is non-finite, or with more NaN samples than this fraction, is skipped (NaN samples below it just contribute zero, as in SiD)
    progress: bool = True  # tqdm progress bar
    nvtx: bool = True  # NVTX ranges around phases (free without a profiler)
    log: LogConfig = field(default_factory=LogConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        return _from_dict(cls, d, "")

    @classmethod
    def from_file(cls, path) -> "DistillConfig":
        """A JSON file, or TOML for a ``.toml`` suffix: a table of (nested) settings, optionally
        naming a ``preset`` to start from. Unreadable or malformed files are a :class:`ConfigError`
        naming the file (and the line, for a syntax error)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        if path.is_dir():
            raise IsADirectoryError(f"config file {str(path)!r} is a directory; give a JSON or TOML file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path}: not a text file (JSON or TOML expected)") from None
        if path.suffix.lower() == ".toml":
            import tomllib

            try:
                d = tomllib.loads(text)
            except RecursionError:
                raise ConfigError(f"config file {path}: nested too deeply to be a config") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
        else:
            try:
                d = json.loads(text)
            except RecursionError:
                raise ConfigError(f"config file {path}: nested too deeply to be a config") from None
            except json.JSONDecodeError as exc:
                hint = "" if path.suffix.lower() == ".json" else "; a TOML file needs the .toml suffix"
                raise ConfigError(f"config file {path}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                                  f"column {exc.colno}){hint}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path}: the top level must be a table/object of settings "
                              f"(e.g. {{\"steps\": 100}}), got a {type(d).__name__}")
        preset = d.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"config file {path}: preset must be a preset name, got {preset!r}")
        base = preset_config(preset) if preset else cls()
        return base.merged(d)

    def merged(self, d: dict) -> "DistillConfig":
        """A copy with the (possibly partial, nested) dict ``d`` applied on top."""
        out = copy.deepcopy(self)
        _apply_dict(out, d, "")
        return out

    def with_overrides(self, overrides) -> "DistillConfig":
        """Apply ``["key=value", "optim.lr=1e-4", ...]``; values parse as JSON, else as strings.
        ``method.name`` is applied first, so the other ``method.*`` keys find their method's options."""
        out = copy.deepcopy(self)
        pairs = []
        for item in overrides or ():
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, raw = item.split("=", 1)
            pairs.append((key.strip(), _parse_value(raw.strip())))
        for key, value in sorted(pairs, key=lambda kv: kv[0] != "method.name"):
            set_dotted(out, key, value)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "DistillConfig":
        """Out-of-range or contradictory settings as a :class:`ConfigError`, before any work starts."""
        self._check_teacher_and_method()
        self._check_training()
        self._check_parallel_and_log()
        self._check_run()
        self._check_device()
        self._check_files_and_cadence()
        return self

    def _check_teacher_and_method(self) -> None:
        t, m = self.teacher, self.method
        choice("teacher.kind", t.kind, ("analytic", "checkpoint", "network"))
        choice("teacher.init", t.init, ("auto", "teacher", "fit"))
        need(t.kind != "checkpoint" or t.path, "teacher.path is required with teacher.kind=checkpoint "
                                               "(on the command line: --teacher PATH)")
        need(not (t.kind == "analytic" and t.init == "teacher"),
             "an analytic teacher has no network to copy: use teacher.init=fit (or auto)")
        choice("teacher.dtype", t.dtype, ("auto", "fp32", "bf16"))
        need(isinstance(t.resolution, int) and t.resolution >= 0, f"teacher.resolution must be an integer >= 0, got {t.resolution!r}")
        positive("teacher.embedded_guidance", t.embedded_guidance, allow_zero=True)
        for k in ("mlp_hidden", "mlp_layers", "fit_batch", "fit_lr"):
            positive(f"teacher.{k}", getattr(t, k))
        positive("teacher.fit_steps", t.fit_steps, allow_zero=True)
        choice("method.name", m.name, available_methods())
        need(type(m) is type(method_config(m.name)),
             f"method.name={m.name!r} but the method section is a {type(m).__name__}: switch methods with "
             f"with_overrides(['method.name={m.name}']) or methods.method_config({m.name!r}, ...)")
        m.validate()
        need(m.name != "ign" or self.teacher.kind == "analytic" or self.data,
             "method.name=ign needs real data: set data=<dataset name or path> (or use an analytic teacher)")

    def _check_training(self) -> None:
        o, e, lo = self.optim, self.ema, self.lora
        positive("optim.lr", o.lr)
        positive("optim.fake_lr", o.fake_lr, allow_zero=True)
        need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"optim.beta1/beta2 must be in [0, 1), got {o.beta1}, {o.beta2}")
        positive("optim.eps", o.eps, allow_zero=True)
        choice("optim.impl", o.impl, ("auto", "fused", "foreach", "plain"))
        need(isinstance(o.grad_accum, int) and o.grad_accum >= 1, f"optim.grad_accum must be an integer >= 1, got {o.grad_accum!r}")
        positive("optim.weight_decay", o.weight_decay, allow_zero=True)
        positive("optim.clip_grad", o.clip_grad, allow_zero=True)
        need(isinstance(o.fake_steps, int) and o.fake_steps >= 1, f"optim.fake_steps must be an integer >= 1, got {o.fake_steps!r}")
        positive("ema.halflife_kimg", e.halflife_kimg)
        positive("ema.rampup", e.rampup, allow_zero=True)
        need(isinstance(lo.rank, int) and not isinstance(lo.rank, bool) and lo.rank >= 0,
             f"lora.rank must be an integer >= 0, got {lo.rank!r}")
        positive("lora.alpha", lo.alpha, allow_zero=True)
        choice("lora.networks", lo.networks, ("both", "generator", "fake"))
        need(isinstance(lo.dropout, (int, float)) and 0 <= lo.dropout < 1, f"lora.dropout must be in [0, 1), got {lo.dropout!r}")
        need(not lo.rank or bool([t for t in lo.targets.split(",") if t.strip()]), "lora.targets must name at least one module")
        need(not lo.rank or importlib.util.find_spec("peft") is not None, "lora.rank > 0 needs peft: pip install peft")

    def _check_parallel_and_log(self) -> None:
        dd, lo = self.distributed, self.lora
        choice("distributed.backend", dd.backend, ("auto", "nccl", "gloo"))
        choice("distributed.rng", dd.rng, ("rank", "global"))
        choice("distributed.strategy", dd.strategy, ("ddp", "fsdp"))
        if dd.strategy == "fsdp":  # what the sharded path does not handle (yet): refused before any work
            for bad, what in ((self.precision == "fp16", "precision=fp16 (its GradScaler is not shard-aware; use precision=bf16)"),
                              (self.compile, "compile=true"), (self.channels_last, "channels_last=true")):
                need(not bad, f"distributed.strategy=fsdp does not support {what} yet: use distributed.strategy=ddp")
        choice("log.tensorboard", self.log.tensorboard, ("auto", "true", "false"))
        for wanted, package in ((self.log.tensorboard == "true", "tensorboard"), (self.log.wandb, "wandb")):
            need(not wanted or importlib.util.find_spec(package) is not None,
                 f"log.{package}=true needs the {package} package: pip install {package}")

    def _check_run(self) -> None:
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(isinstance(self.steps, int) and self.steps >= 0, f"steps must be an integer >= 0, got {self.steps!r}")
        need(isinstance(self.out_dir, str) and self.out_dir.strip() != "",
             "out_dir must not be empty (it would write the run into the current directory): give the run's "
             "directory, e.g. out_dir=runs/my-run")

    def _check_device(self) -> None:
        """The device and the loss backend must exist here: checked before any teacher is loaded or fitted."""
        m = self.method
        import torch

        from ..ops.registry import backend_status

        dev = self.device
        need(isinstance(dev, str) and (dev in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", dev) is not None),
             f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")
        if dev.startswith("cuda"):
            need(torch.cuda.is_available(),
                 f"device={dev}: no CUDA device is visible here (torch.cuda.is_available() is False); "
                 f"use device=cpu or device=auto")
            count = torch.cuda.device_count()
            need(dev == "cuda" or int(dev[5:]) < count,
                 f"device={dev}: there are {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
        dev_type = "cuda" if dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available()) else "cpu"
        if m.backend != "auto":
            ok, reason = backend_status(m.backend, dev_type)
            need(ok, f"method.backend={m.backend} cannot run on this run's {dev_type} device ({reason}); "
                     f"use method.backend=auto")
        choice("precision", self.precision, ("fp32", "tf32", "bf16", "fp16"))
        choice("compile_scope", self.compile_scope, COMPILE_SCOPES)
        choice("compile_mode", self.compile_mode, COMPILE_MODES)
        need(not (self.log.mfu and self.compile), "log.mfu=true counts FLOPs in eager mode (compiled code bypasses "
                                                   "the counter; the FLOPs are the same): set compile=false for it")
        need(not (self.compile and self.compile_mode == "reduce-overhead" and dev_type != "cuda"),
             "compile_mode=reduce-overhead captures CUDA graphs: it needs a CUDA device (use compile_mode=default on CPU)")

    def _check_files_and_cadence(self) -> None:
        need(not self.prompts or Path(self.prompts).is_file(),
             f"prompts={self.prompts}: " + ("a folder, not a prompt file (.txt, .csv or .jsonl)"
                                            if Path(self.prompts).is_dir() else "no such file"))
        need(isinstance(self.resume, str) and self.resume != "", "resume must be auto, none or a checkpoint path")
        need(self.resume in ("auto", "none") or Path(self.resume).exists(),
             f"resume={self.resume}: no such checkpoint or run directory (use resume=auto to continue the run in "
             f"out_dir, resume=none to start afresh, or the path of a checkpoint)")
        for k in ("ckpt_every", "log_every", "sample_every", "eval_every", "threads"):
            need(isinstance(getattr(self, k), int) and getattr(self, k) >= 0, f"{k} must be an integer >= 0, got {getattr(self, k)!r}")
        cores = os.cpu_count() or 1
        need(self.threads <= cores, f"threads={self.threads}: this machine has {cores} CPU cores (threads=0 leaves "
                                    f"torch's own choice)")
        need(isinstance(self.keep_last, int) and self.keep_last >= 1, f"keep_last must be an integer >= 1, got {self.keep_last!r}")
        need(isinstance(self.max_nan_steps, int) and self.max_nan_steps >= 1, f"max_nan_steps must be >= 1, got {self.max_nan_steps!r}")
        need(0 <= self.max_nan_fraction < 1, f"max_nan_fraction must be in [0, 1), got {self.max_nan_fraction!r}")
        need(isinstance(self.eval_samples, int) and self.eval_samples >= 16, f"eval_samples must be >= 16, got {self.eval_samples!r}")
        need(isinstance(self.final_samples, int) and self.final_samples >= -1,
             f"final_samples must be -1 (auto), 0 (none) or a count, got {self.final_samples!r}")


# ---------------------------------------------------------------------- dict plumbing
def valid_keys(obj=None, prefix: str = "") -> list[str]:
    """All dotted keys of a config (``optim.lr``, ``method.alpha``, ...)."""
    obj = obj if obj is not None else DistillConfig()
    keys = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            keys += valid_keys(v, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _field_comments(cls) -> dict:
    """The one-line meaning of each field: the comment after its default in the class source."""
    out = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def describe_config() -> str:
    """Every config key with its default and meaning, generated from the dataclasses; the
    ``method`` section as the options every method shares, then each method's own."""
    lines = []

    def row(key, value, doc):
        lines.append(f"  {key:<30} {json.dumps(value):<14} {doc}")

    def walk(obj, prefix):
        docs = _field_comments(type(obj))
        for f in fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, MethodConfig):
                continue
            if is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                row(prefix + f.name, v, docs.get(f.name, ""))

    lines.append("run settings (key, default, meaning):")
    walk(DistillConfig(), "")
    shared = {f.name for f in fields(MethodConfig)}
    lines.append("method.* shared by every method:")
    docs = _field_comments(MethodConfig)
    for f in fields(MethodConfig):
        row(f"method.{f.name}", getattr(MethodConfig(), f.name), docs.get(f.name, ""))
    for name in available_methods():
        cfg = method_config(name)
        docs = _field_comments(type(cfg))
        own = [f for f in fields(cfg) if f.name not in shared]
        if own:
            lines.append(f"method.* of method.name={name}:")
            for f in own:
                row(f"method.{f.name}", getattr(cfg, f.name), docs.get(f.name, ""))
    return "\n".join(lines)


def _unknown(key: str, obj, prefix: str) -> ConfigError:
    import difflib

    valid = valid_keys(obj, prefix)
    owners = [m for m in available_methods() if prefix == "method." and key in {f.name for f in fields(method_config(m))}]
    if owners:
        hint = f" It is an option of method {' and '.join(owners)}: set method.name first."
    else:
        close = difflib.get_close_matches(prefix + key, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {prefix + key!r}.{hint} Valid keys: {', '.join(valid)}")


def switch_method(current: MethodConfig, name) -> MethodConfig:
    """The config of method ``name``, keeping the values of the options every method shares
    (an option of the same name in two methods may mean different things, so it is not carried)."""
    new = method_config(_coerce(name, str, "method.name"))
    for k in {f.name for f in fields(MethodConfig)} - {"name"}:
        setattr(new, k, getattr(current, k))
    return new


def _coerce(value, typ, key: str):
    if typ in ("bool", bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ in ("int", int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if not -2**62 <= value <= 2**62:  # what torch, numpy and the run's seed offsets hold
            raise ConfigError(f"{key} must be an integer within +-2^62, got {value!r}")
        return int(value)
    if typ in ("float", float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if typ in ("str", str):
        if isinstance(value, bool):  # e.g. log.tensorboard=true
            return str(value).lower()
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _field_types(obj) -> dict:
    return get_type_hints(type(obj))


def _apply_dict(obj, d: dict, prefix: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table/dict, got {d!r}")
    names = {f.name for f in fields(obj)}
    types = _field_types(obj)
    for k, v in d.items():
        if k not in names:
            raise _unknown(k, obj, prefix)
        cur = getattr(obj, k)
        if isinstance(cur, MethodConfig) and isinstance(v, dict) and "name" in v:
            cur = switch_method(cur, v["name"])
            setattr(obj, k, cur)
            v = {kk: vv for kk, vv in v.items() if kk != "name"}
        if is_dataclass(cur):
            _apply_dict(cur, v, f"{prefix}{k}.")
        else:
            setattr(obj, k, _coerce(v, types[k], prefix + k))


def _from_dict(cls, d: dict, prefix: str):
    obj = cls()
    _apply_dict(obj, d, prefix)
    return obj


def set_dotted(cfg, key: str, value) -> None:
    if key == "method.name":
        cfg.method = switch_method(cfg.method, value)
        return
    parts = key.split(".")
    obj, prefix = cfg, ""
    for p in parts[:-1]:
        if not hasattr(obj, p) or not is_dataclass(getattr(obj, p)):
            raise _unknown(p, obj, prefix)
        obj, prefix = getattr(obj, p), f"{prefix}{p}."
    leaf = parts[-1]
    if leaf not in {f.name for f in fields(obj)} or is_dataclass(getattr(obj, leaf)):
        raise _unknown(leaf, obj, prefix)
    setattr(obj, leaf, _coerce(value, _field_types(obj)[leaf], key))


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ConfigError(f"override value {raw[:40]!r}... is nested too deeply") from None
    except json.JSONDecodeError:
        low = raw.lower()
        if low in ("true", "false"):
            return low == "true"
        return raw


def preset_config(name: Optional[str] = "toy") -> DistillConfig:
    """A named preset (``toy`` when None: the 2-D ring, about a minute)."""
    name = name or "toy"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]()


def default_config() -> DistillConfig:
    return preset_config("toy")
