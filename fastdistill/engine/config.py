"""Distillation configuration: nested dataclasses, validation, presets, dotted overrides.

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
from typing import Any, Optional, get_type_hints

from ..methods import ConfigError, MethodConfig, available_methods, method_config
from ..methods.base import check as need, check_choice as choice, check_positive as positive

COMPILE_SCOPES = ("regional", "full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
        t, m, o, e, dd = self.teacher, self.method, self.optim, self.ema, self.distributed
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
        lo = self.lora
        need(isinstance(lo.rank, int) and not isinstance(lo.rank, bool) and lo.rank >= 0,
             f"lora.rank must be an integer >= 0, got {lo.rank!r}")
        positive("lora.alpha", lo.alpha, allow_zero=True)
        choice("lora.networks", lo.networks, ("both", "generator", "fake"))
        need(isinstance(lo.dropout, (int, float)) and 0 <= lo.dropout < 1, f"lora.dropout must be in [0, 1), got {lo.dropout!r}")
        need(not lo.rank or bool([t for t in lo.targets.split(",") if t.strip()]), "lora.targets must name at least one module")
        need(not lo.rank or importlib.util.find_spec("peft") is not None, "lora.rank > 0 needs peft: pip install peft")
        choice("distributed.backend", dd.backend, ("auto", "nccl", "gloo"))
        choice("distributed.rng", dd.rng, ("rank", "global"))
        choice("distributed.strategy", dd.strategy, ("ddp", "fsdp"))
        if dd.strategy == "fsdp":  # what the sharded path does not handle (yet): refused before any work
            for bad, what in ((self.precision == "fp16", "precision=fp16 (its GradScaler is not shard-aware; use precision=bf16)"),
                              (self.compile, "compile=true"), (self.activation_checkpointing, "activation_checkpointing=true"),
                              (self.channels_last, "channels_last=true"), (lo.rank > 0, "lora.rank > 0")):
                need(not bad, f"distributed.strategy=fsdp does not support {what} yet: use distributed.strategy=ddp")
        choice("log.tensorboard", self.log.tensorboard, ("auto", "true", "false"))
        for wanted, package in ((self.log.tensorboard == "true", "tensorboard"), (self.log.wandb, "wandb")):
            need(not wanted or importlib.util.find_spec(package) is not None,
                 f"log.{package}=true needs the {package} package: pip install {package}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(isinstance(self.steps, int) and self.steps >= 0, f"steps must be an integer >= 0, got {self.steps!r}")
        need(isinstance(self.out_dir, str) and self.out_dir.strip() != "",
             "out_dir must not be empty (it would write the run into the current directory): give the run's "
             "directory, e.g. out_dir=runs/my-run")
        # the device and the loss backend must exist here: checked before any teacher is loaded or fitted
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
        return self


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


def _switch_method(current: MethodConfig, name) -> MethodConfig:
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
            cur = _switch_method(cur, v["name"])
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
        cfg.method = _switch_method(cfg.method, value)
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


# ---------------------------------------------------------------------- presets
def _toy() -> DistillConfig:
    """The embedded default: 8-Gaussian ring, exact analytic teacher, a few minutes on 2 CPU cores.

    The generator and fake network start from an MLP denoiser fitted to the teacher (the
    analytic teacher has no weights to copy). DMD is the default method here because it reaches
    the teacher's quality on this toy within ~1000 iterations; SiD needs several times more
    iterations on these sharp, well-separated modes (``preset=toy-sid``).
    """
    cfg = DistillConfig()
    cfg.teacher = TeacherConfig(kind="analytic", name="8gaussians", init="fit", fit_steps=1000, fit_batch=512)
    cfg.method = method_config("dmd")
    cfg.optim.lr = 1e-4
    cfg.optim.fake_lr = 1e-3
    cfg.ema.halflife_kimg = 20.0
    cfg.batch_size = 256
    cfg.steps = 1500
    cfg.threads = 1
    cfg.ckpt_every = 500
    cfg.log_every = 50
    cfg.eval_every = 250
    cfg.out_dir = "runs/toy"
    return cfg


def _toy_sid() -> DistillConfig:
    """The toy with SiD (official loss and schedule): slower on this toy; 6000 iterations."""
    cfg = _toy()
    cfg.method = _switch_method(cfg.method, "sid")
    cfg.steps = 6000
    cfg.eval_every = 500
    cfg.out_dir = "runs/toy-sid"
    return cfg


def _toy_sign() -> DistillConfig:
    """SIGN (reconstruction, docs/algorithms.md section 5) on the 2-D toy: time-free student
    ``f(x) = D_theta(x; 2.5)`` from the fitted teacher, DMD as L_dist on this toy (fast here, as
    for ``toy``), idempotence / reconstruction / flow terms on the exact data."""
    cfg = _toy()
    cfg.method = _switch_method(cfg.method, "sign")
    cfg.method.sign_dist = "dmd"
    cfg.out_dir = "runs/toy-sign"
    return cfg


def _toy_ign() -> DistillConfig:
    """The IGN baseline on the 2-D toy with its official optimiser (Adam lr 1e-4, betas (0.5, 0.999))."""
    cfg = _toy()
    cfg.method = _switch_method(cfg.method, "ign")
    cfg.optim.lr = 1e-4
    cfg.optim.beta1, cfg.optim.beta2 = 0.5, 0.999
    cfg.out_dir = "runs/toy-ign"
    return cfg


def _digits_sign() -> DistillConfig:
    """SIGN on scikit-learn's 8x8 digits with the shipped digits teacher (``teacher.path=digits``
    resolves to the shipped digits teacher) and the real digits as data.

    Budgeted like ``digits`` (batch 32, fake_lr 3e-4, EMA half-life 5 kimg with ramp-up 0.5):
    about 7 minutes on one CPU thread; ``scripts/sign_results.py --part digits`` measures it.
    At weight 1 the SiD term's gradient is about 1000x the idempotent terms' on digits (norms
    ~760 against 0.5-0.9), i.e. they would be switched off. ``l_idem = l_rec = 3000``: at 100
    (each about a tenth of SiD) the idempotence error did not fall (real digits 0.045 -> 0.044,
    1-step samples 0.020 -> 0.056); at 3000 it falls on real digits all along (-> 0.026) and on
    1-step samples after the first 100 iterations, where they sharpen (0.036 -> 0.025), and the
    1-step FID improves too; at 10000 the FID gets worse. ``l_rec`` must be as strong as
    ``l_idem``: with ``l_rec = 100`` the map collapses onto blurry fixed points (1-step FID 1.27).
    The price: a near-identity map around the data repairs masked / shifted digits much less than
    the weaker-weighted one did. ``sign_pos_decay = 0.25``: three quarters of the generated
    samples are the sampler's first application (a quarter when uniform), which lowers the
    1-step FID and its idempotence error (0.5 is between) and makes an iteration cheaper.
    ``l_flow`` stays 100.
    """
    cfg = _digits()
    cfg.data = "digits"
    cfg.method = method_config("sign", sign_dist="sid", l_idem=3000.0, l_rec=3000.0, l_flow=100.0, sign_pos_decay=0.25)
    cfg.steps = 500
    cfg.eval_every = 0
    cfg.progress = True
    cfg.out_dir = "runs/digits-sign"
    return cfg


def _digits() -> DistillConfig:
    """SiD on scikit-learn's 8x8 digits with the shipped digits teacher (``teacher.path=digits``).

    Budgeted for the digits report (``fastdistill.reports.digits``, the CLI's default): SiD, SIM
    and DMD side by side, one process each, after the teacher table, in under 10 minutes on 2
    CPU cores; ``steps=3000`` (about 35 minutes on one core) gets closer to the teacher.
    Generator, fake network and EMA start as copies of the teacher (SiD's set-up); FID in the
    digits classifier's features is logged every ``eval_every`` steps (``eval_data=digits``)
    and drawn in ``fid_vs_iterations.png``.
    """
    cfg = _report_budget(DistillConfig())
    cfg.teacher = TeacherConfig(kind="checkpoint", path="digits", init="teacher")
    cfg.eval_data = "digits"
    cfg.eval_every = 100
    cfg.eval_samples = 898
    cfg.out_dir = "runs/digits"
    return cfg


def _report_budget(cfg: DistillConfig) -> DistillConfig:
    """The settings of the digits reports' students, three of which train side by side on 2 CPU
    cores within a report's budget: batch 32, 600 iterations (about 0.65 s each on one thread),
    lr 1e-4 with a faster fake network, a short EMA, no checkpoints, no progress bar."""
    cfg.optim.lr = 1e-4
    cfg.optim.fake_lr = 3e-4  # the fake network tracks the moving generator faster (measured: smoother FID curves)
    cfg.ema.halflife_kimg = 5.0
    cfg.ema.rampup = 0.5  # longer EMA early on: the 1e-4 generator oscillates, its EMA falls monotonically
    cfg.batch_size = 32
    cfg.steps = 600
    cfg.threads = 1
    cfg.ckpt_every = 0
    cfg.log_every = 50
    cfg.progress = False
    return cfg


def _digits_sim() -> DistillConfig:
    """SIM (pseudo-Huber, c=1e-3) on digits with the settings of ``digits``."""
    cfg = _digits()
    cfg.method = _switch_method(cfg.method, "sim")
    cfg.out_dir = "runs/digits-sim"
    return cfg


def _digits_dmd() -> DistillConfig:
    """DMD on digits with the settings of ``digits`` (cheaper per step: no gradient through the scores)."""
    cfg = _digits()
    cfg.method = _switch_method(cfg.method, "dmd")
    cfg.out_dir = "runs/digits-dmd"
    return cfg


def _cifar10() -> DistillConfig:
    """Official SiD CIFAR-10 settings (teacher.path must point at the EDM checkpoint)."""
    cfg = DistillConfig()
    cfg.teacher = TeacherConfig(kind="checkpoint", path="", init="teacher")
    cfg.optim.lr = 1e-5
    cfg.batch_size = 256
    cfg.steps = 400_000
    cfg.ema.halflife_kimg = 500.0
    cfg.ckpt_every = 2000
    cfg.log_every = 100
    cfg.sample_every = 2000
    cfg.out_dir = "runs/cifar10"
    return cfg


def _ffhq64() -> DistillConfig:
    cfg = _cifar10()
    cfg.batch_size = 512
    cfg.out_dir = "runs/ffhq64"
    return cfg


def _afhq64() -> DistillConfig:
    cfg = _ffhq64()
    cfg.optim.lr = 5e-6
    cfg.out_dir = "runs/afhq64"
    return cfg


def _imagenet64() -> DistillConfig:
    cfg = _cifar10()
    cfg.optim.lr = 4e-6
    cfg.batch_size = 8192
    cfg.precision = "bf16"
    cfg.out_dir = "runs/imagenet64"
    return cfg


SD_FAMILY = "Stable Diffusion 1.x/2.x"  # the family of the SD 1.5 recipes (teachers/families/sd.py)


def _pipeline_recipe(method: MethodConfig, lr: float, batch_size: int, out_dir: str) -> DistillConfig:
    """What the text-to-image presets share: a pipeline teacher (``--teacher DIR``) copied into the
    generator and fake network, one learning rate for both, 20000 iterations with checkpoints
    and pictures every 500, no FID tracking during training."""
    cfg = DistillConfig()
    cfg.teacher = TeacherConfig(kind="checkpoint", path="", init="teacher")
    cfg.method = method
    cfg.optim.lr = cfg.optim.fake_lr = lr
    cfg.batch_size = batch_size
    cfg.steps = 20000
    cfg.ckpt_every = 500
    cfg.sample_every = 500
    cfg.eval_data = "none"
    cfg.out_dir = out_dir
    return cfg


def _sid_lsg_sd15() -> DistillConfig:
    """SiD-LSG's recipe for Stable Diffusion 1.5 / 2.1-base (docs/algorithms.md section 9):
    ``distill --teacher PIPELINE_DIR --prompts FILE``. SiD with alpha 1 and all four guidance
    scales 1.5 (the paper's best FID), timesteps in [20, 980), generator input at t 625,
    Adam betas (0, 0.999) with lr 1e-6 for both networks, loss scales 1, EMA half-life 50 kimg,
    batch 512, fp32 throughout (the frozen teacher too: ``teacher.dtype=fp32``; ``auto`` halves its
    memory). Left out: the paper's 8-GPU throughput (here: whatever batch fits) and its COCO
    evaluation during training (``fastdistill eval`` afterwards)."""
    cfg = _pipeline_recipe(method_config("sid", alpha=1.0, generator_loss_scale=1.0, fake_loss_scale=1.0,
                                         noise_levels="teacher", guidance_teacher=1.5, guidance_fake=1.5,
                                         guidance_fake_train=1.5), lr=1e-6, batch_size=512, out_dir="runs/sid-lsg-sd15")
    cfg.teacher.dtype = "fp32"
    cfg.teacher.family = SD_FAMILY
    cfg.ema.halflife_kimg = 50.0
    return cfg


def _dmd2_sd15_nogan() -> DistillConfig:
    """DMD2's Stable Diffusion 1.5 recipe without its GAN stage (so not its published FID 8.35;
    9.28 was reported without the GAN): teacher guidance 1.75, fake network unguided, timesteps
    in [20, 980), generator input at t 999 (DMD2's conditioning timestep), AdamW lr 1e-5 for both
    networks with betas (0.9, 0.999) and weight decay 0.01, gradient norms clipped at 10, 10 fake
    updates per generator update, batch 2048 (32 on each of 64 GPUs). Left out: the GAN head on
    real latents and the second stage at lr 5e-7."""
    cfg = _pipeline_recipe(method_config("dmd", generator_loss_scale=1.0, fake_loss_scale=1.0, noise_levels="teacher",
                                         t_init=999, guidance_teacher=1.75),
                           lr=1e-5, batch_size=2048, out_dir="runs/dmd2-sd15-nogan")
    cfg.optim.beta1, cfg.optim.beta2 = 0.9, 0.999
    cfg.optim.weight_decay = 0.01
    cfg.optim.clip_grad = 10.0
    cfg.optim.fake_steps = 10
    cfg.teacher.family = SD_FAMILY
    return cfg


#: the guidance scale of the digits text-to-image presets (every SiD-LSG kappa; DMD2's teacher guidance)
DIGITS_T2I_GUIDANCE = 1.5


def _digits_t2i(method: MethodConfig, out_dir: str) -> DistillConfig:
    """What the digits text-to-image presets share: the shipped pipeline teacher
    (``teacher.path=digits-t2i``, fp32) and its training prompts, with the digits report's budget
    (:func:`_report_budget`), so the report (``distill --preset digits-t2i``) runs three students
    side by side on 2 cores."""
    from ..teachers.digits_t2i import PROMPT_FILES, digits_t2i_path

    cfg = _report_budget(_pipeline_recipe(method, lr=1e-4, batch_size=32, out_dir=out_dir))
    cfg.teacher.path = "digits-t2i"
    cfg.teacher.dtype = "fp32"
    cfg.prompts = str(digits_t2i_path() / PROMPT_FILES["train"])
    cfg.sample_every = 0
    return cfg


def _digits_t2i_sid() -> DistillConfig:
    """SiD-LSG (alpha 1, all four guidance scales :data:`DIGITS_T2I_GUIDANCE`) on the digits
    text-to-image teacher: a one-step student that answers prompts like "a handwritten seven"."""
    g = DIGITS_T2I_GUIDANCE
    return _digits_t2i(method_config("sid", alpha=1.0, generator_loss_scale=1.0, guidance_teacher=g, guidance_fake=g,
                                     guidance_fake_train=g), "runs/digits-t2i-sid")


def _digits_t2i_sim() -> DistillConfig:
    """SIM guided as SiD-LSG on the digits text-to-image teacher."""
    g = DIGITS_T2I_GUIDANCE
    return _digits_t2i(method_config("sim", generator_loss_scale=1.0, guidance_teacher=g, guidance_fake=g,
                                     guidance_fake_train=g), "runs/digits-t2i-sim")


def _digits_t2i_dmd() -> DistillConfig:
    """DMD with DMD2's guidance (the teacher only; fake network unguided) on the digits
    text-to-image teacher, generator input at t 999 as DMD2's; no GAN stage."""
    return _digits_t2i(method_config("dmd", generator_loss_scale=1.0, t_init=999,
                                     guidance_teacher=DIGITS_T2I_GUIDANCE), "runs/digits-t2i-dmd")


PRESETS = {"toy": _toy, "toy-sid": _toy_sid, "toy-sign": _toy_sign, "toy-ign": _toy_ign, "digits-sign": _digits_sign, "digits": _digits, "digits-sim": _digits_sim, "digits-dmd": _digits_dmd, "cifar10": _cifar10, "ffhq64": _ffhq64, "afhq64": _afhq64, "imagenet64": _imagenet64,
           "sid-lsg-sd15": _sid_lsg_sd15, "dmd2-sd15-nogan": _dmd2_sd15_nogan,
           "digits-t2i-sid": _digits_t2i_sid, "digits-t2i-sim": _digits_t2i_sim, "digits-t2i-dmd": _digits_t2i_dmd}


def preset_config(name: Optional[str] = "toy") -> DistillConfig:
    """A named preset (``toy`` when None: the 2-D ring, about a minute)."""
    name = name or "toy"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]()


def default_config() -> DistillConfig:
    return preset_config("toy")
