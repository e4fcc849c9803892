"""Building the networks of a run: the teacher, and the network the generator / fake net start from.

- ``teacher.kind=checkpoint``: ``load_teacher(teacher.path)`` (``digits`` is the shipped
  teacher); the generator, fake network and EMA are copies of it (SiD's set-up).
- ``teacher.kind=analytic``: ``load_teacher("analytic:" + teacher.name)``, an exact
  Gaussian-mixture denoiser. It has no weights to copy, so the generator and fake network start
  from a small EDM-preconditioned MLP fitted to the teacher's denoiser by regression
  (``teacher.init=fit``): ``min E lambda(sigma) |D_mlp(x0 + sigma n; sigma) - D_teacher(...)|^2``.
- ``teacher.kind=network``: a Denoiser object handed to :func:`run_distillation`.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..data import load_dataset
from ..methods import ConfigError
from ..losses import dsm_loss
from ..teachers.toolkit import lr_factor
from ..teachers.traits import TeacherTraits, traits
from ..teachers import MLPDenoiser, load_teacher
from ..teachers.loading import ANALYTIC_PREFIX


def build_teacher(cfg, teacher, device: torch.device):
    """The run's frozen teacher on ``device``: ``teacher`` when one is given, else the configured one."""
    if teacher is None:
        teacher = _configured_teacher(cfg)
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(device).eval().requires_grad_(False)
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
    return teacher


def _configured_teacher(cfg):
    t = cfg.teacher
    if t.kind == "network":
        raise ValueError("teacher.kind=network needs a Denoiser object passed to run_distillation(config, teacher=...)")
    if t.kind == "analytic":
        return load_teacher(ANALYTIC_PREFIX + t.name)
    teacher = load_teacher(t.path, resolution=t.resolution or None)
    if t.embedded_guidance:
        if not traits(teacher).guidance_distilled:
            raise ConfigError(f"teacher.embedded_guidance={t.embedded_guidance}: {t.path} is not a guidance-distilled "
                              f"pipeline (FLUX.1-dev); guide it with method.guidance_teacher / guidance_fake")
        teacher.embedded_guidance = float(t.embedded_guidance)
    return teacher


#: what the measurements say of compile=true on CPU (the run's log and `fastdistill doctor` say it)
COMPILE_ON_CPU = ("compile=true on CPU: in the measurements of docs/performance.md compiled training ran slower "
                  "than eager on CPU (and compiling takes minutes at U-Net size); compile is meant for CUDA")


def autocast_for(cfg, device: torch.device, say: Callable[[str], None]) -> Callable:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32); says where bf16 would
    be emulated and where compiling is known to be slower."""
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if cfg.precision == "bf16" and not bf16_is_fast(device):
        say(f"fastdistill: precision=bf16 on {device}, which has no native bf16 (emulated, usually slower than "
            f"fp32): precision=fp32 is likely faster here")
    if cfg.compile and device.type == "cpu":
        say(f"fastdistill: {COMPILE_ON_CPU}")
    if amp_dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=amp_dtype)


def bf16_is_fast(device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA with bf16, or a CPU with AVX512-BF16 / AMX
    (oneDNN's bf16 path). Elsewhere (an AVX2 CPU) bf16 matmuls are emulated, many times slower than fp32."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def build_data(cfg, teacher, t: TeacherTraits):
    """Real data for methods that use it: ``data(n, generator) -> (x, one-hot labels or None)`` on the CPU.

    ``cfg.data`` names a dataset (``fastdistill.data.load_dataset``); empty: the teacher's exact
    samples when it has ``sample`` (analytic teachers, unconditional), else ``None`` (the method
    falls back to teacher samples of its own).
    """
    shape, label_dim = t.data_shape, t.label_dim
    if cfg.data:
        ds = load_dataset(cfg.data)
        if tuple(ds.data_shape) != tuple(shape):
            raise ValueError(f"data {cfg.data!r} has sample shape {tuple(ds.data_shape)}, the teacher {tuple(shape)}")
        if label_dim and ds.label_dim != label_dim:
            raise ValueError(f"the teacher is class-conditional with label_dim {label_dim}; data {cfg.data!r} has "
                             f"label_dim {ds.label_dim}")

        def data(n, g):
            x, lab = ds.sample(n, g)
            return x.float(), (lab if label_dim else None)

        return data
    if t.exact_samples and not label_dim:
        return lambda n, g: (teacher.sample(n, generator=g).float().cpu(), None)
    return None


def has_weights(net) -> bool:
    return isinstance(net, torch.nn.Module) and any(p.numel() for p in net.parameters())


def _teacher_name(cfg) -> str:
    t = cfg.teacher
    return {"analytic": f"analytic:{t.name}", "checkpoint": repr(t.path)}.get(t.kind, "given as a network")


def resolve_init(cfg, teacher, t: TeacherTraits) -> str:
    """What the generator starts from, checked right after the teacher is built and before
    anything else is done: ``teacher`` (copies of its weights) or ``fit`` (an MLP fitted to its
    denoiser on its own samples, which needs ``teacher.sample``)."""
    init = cfg.teacher.init
    if init == "auto":
        init = "teacher" if has_weights(teacher) else "fit"
    if init == "teacher" and not has_weights(teacher):
        raise ConfigError("the teacher has no weights to copy; use teacher.init=fit")
    if init == "fit" and cfg.teacher.fit_steps > 0 and not t.exact_samples:
        raise ConfigError(
            f"teacher.init=fit fits an MLP to samples of the teacher, but the teacher ({_teacher_name(cfg)}) has no "
            f"sample() method: for a network teacher use teacher.init=teacher (the generator starts as a copy of "
            f"it; teacher.init=auto picks that too)")
    return init


def mlp_arch(cfg, t: TeacherTraits) -> dict:
    return dict(dim=int(math.prod(t.data_shape)), data_shape=list(t.data_shape), hidden=cfg.teacher.mlp_hidden,
                layers=cfg.teacher.mlp_layers, sigma_data=t.sigma_data, label_dim=t.label_dim)


def make_mlp(arch: dict) -> torch.nn.Module:
    """The EDM-preconditioned MLP denoiser of ``fastdistill.teachers.mlp``."""
    return MLPDenoiser(**_mlp_kwargs(arch))


def _mlp_kwargs(arch: dict) -> dict:
    params = inspect.signature(MLPDenoiser).parameters
    mapping = {
        "dim": arch["dim"], "data_dim": arch["dim"], "data_shape": tuple(arch["data_shape"]),
        "hidden": arch["hidden"], "hidden_dim": arch["hidden"], "width": arch["hidden"],
        "layers": arch["layers"], "num_layers": arch["layers"], "depth": arch["layers"],
        "sigma_data": arch["sigma_data"], "label_dim": arch["label_dim"],
    }
    return {k: v for k, v in mapping.items() if k in params}


def fit_denoiser(net: torch.nn.Module, teacher, t: TeacherTraits, steps: int, batch: int, lr: float, seed: int,
                 device: torch.device, progress: bool = False, p_mean: float = -1.2, p_std: float = 1.2) -> list[float]:
    """Regress ``net`` onto the teacher's denoiser over the noise levels distillation visits.

    Half the batch has ln sigma ~ N(p_mean, p_std^2) (the DSM range), half ln sigma uniform on
    [ln 0.002, ln 80] (the generator input 2.5 and the generator-step range). Targets are the
    teacher's outputs at the same noisy points: far less variance than plain DSM, so a few
    thousand steps give an accurate initial generator and fake network. Needs ``teacher.sample``.
    """
    if not t.exact_samples:
        raise ValueError("teacher.init=fit needs a teacher with sample(n, generator) (e.g. an analytic teacher)")

    g = torch.Generator().manual_seed(seed + 12345)
    shape, sd = t.data_shape, t.sigma_data
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, max(steps, 1), 100, "cosine") + 0.02)
    net.train()
    losses = []
    it = range(steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = it = tqdm(it, desc="fitting initial network", unit="it", dynamic_ncols=True)
    half = batch // 2
    lo, hi = math.log(0.002), math.log(80.0)
    for _ in it:
        x0 = teacher.sample(batch, generator=g).reshape(batch, *shape).float()
        ln_s = torch.cat([torch.randn(half, generator=g) * p_std + p_mean,
                          torch.rand(batch - half, generator=g) * (hi - lo) + lo])
        sigma = ln_s.exp()
        x = x0 + sigma.reshape(-1, *([1] * len(shape))) * torch.randn(x0.shape, generator=g)
        x, sigma = x.to(device), sigma.to(device)
        with torch.no_grad():
            target = teacher(x, sigma).float()
        loss = dsm_loss(net(x, sigma), target, sigma, sigma_data=sd)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None and len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    if bar is not None:
        bar.close()
    return losses


def copy_net(net: torch.nn.Module, shared: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """A deep copy of ``net`` that holds the very parameters of ``shared`` (a part of ``net``, or
    ``net``) instead of copies of them: one storage for both."""
    memo = {} if shared is None else {id(p): p for p in shared.parameters()}
    return copy.deepcopy(net, memo)


def shared_base(cfg, teacher, t: TeacherTraits, init: str) -> Optional[torch.nn.Module]:
    """The module whose frozen parameters the LoRA networks hold instead of copies of them
    (``lora.share_base``): the teacher's denoising network, when the students start from the
    teacher's weights and those are fp32 here (the bf16 cast of ``teacher.dtype`` comes later and
    then applies to the shared base too). None: every network has its own copy (also when the
    teacher is sharded, ``distributed.strategy=fsdp`` or ``fsdp_teacher``: sharding gives it new
    parameters)."""
    sharded = cfg.distributed.strategy == "fsdp" or cfg.distributed.fsdp_teacher
    if not (cfg.lora.rank and cfg.lora.share_base and init == "teacher") or sharded:
        return None
    base = t.network if t.network is not None else teacher
    return base if all(p.dtype == torch.float32 for p in base.parameters()) else None


@dataclass
class Students:
    """The trained networks of a run before :func:`parallelize`: generator, fake network and the
    generator's EMA copy; what they started from (``init``: teacher, fit or given), the MLP's
    ``arch`` when they are one, and ``arch_config`` (class + init kwargs) when their class is registered."""
    generator: torch.nn.Module
    fake: torch.nn.Module
    ema: torch.nn.Module
    init: str
    arch: Optional[dict]
    arch_config: Optional[dict]
    #: per network, the parameters that are the teacher's own (LoRA on a shared base), by name
    from_teacher: dict = field(default_factory=dict)


def build_students(cfg, teacher, t: TeacherTraits, init_network: Optional[torch.nn.Module], device: torch.device, fit: bool,
                   progress: bool) -> Students:
    """Generator, fake network and EMA copy, in fp32 on ``device``: copies of ``init_network``, of
    the teacher's weights, or of an MLP fitted to the teacher (``fit``: not when resuming, where the
    checkpoint holds the weights); LoRA factors added where ``lora`` says, each LoRA network on the
    teacher's own frozen weights where :func:`shared_base` gives them; channels_last weights."""
    from ..teachers.checkpoint import teacher_config
    from .lora import LORA_MARK, add_lora

    init = resolve_init(cfg, teacher, t) if init_network is None else "given"
    lo, arch = cfg.lora, None
    lora_g, lora_f = lo.rank and lo.networks in ("both", "generator"), lo.rank and lo.networks in ("both", "fake")
    shared = shared_base(cfg, teacher, t, init)
    if init_network is not None:
        base = copy_net(init_network)
    elif init == "teacher":
        base = copy_net(teacher, shared if lora_g else None)
    else:
        arch = mlp_arch(cfg, t)
        base = make_mlp(arch)
        if fit and cfg.teacher.fit_steps > 0:
            fit_denoiser(base, teacher, t, cfg.teacher.fit_steps, cfg.teacher.fit_batch, cfg.teacher.fit_lr,
                         cfg.seed, device, progress=progress)
    base = base.to(device).float().requires_grad_(True)
    fake = (copy_net(teacher, shared).to(device).requires_grad_(True) if lora_f and shared is not None
            else copy_net(base))
    ema = copy_net(base, shared if lora_g else None)
    if lora_g:
        add_lora(base, lo)
    if lora_f:
        add_lora(fake, lo)
    if lora_g:  # the EMA starts as the generator: its adapters take the generator's first values
        add_lora(ema, lo)
        with torch.no_grad():
            for (name, e), g in zip(ema.named_parameters(), base.parameters()):
                if LORA_MARK in name:
                    e.copy_(g)
    try:  # class + init kwargs that rebuild the generator (registered teacher classes)
        arch_config = teacher_config(base)
    except TypeError:
        arch_config = None
    teachers = set() if shared is None else {id(p) for p in shared.parameters()}
    from_teacher = {name: names for name, net in (("generator", base), ("fake", fake), ("ema", ema))
                    if (names := [n for n, p in net.named_parameters() if id(p) in teachers])}
    students = Students(base, fake, ema, init, arch, arch_config, from_teacher)
    if cfg.channels_last:  # 4-D weights only; activations follow the weights' layout
        for net in (students.generator, students.fake, students.ema):
            net.to(memory_format=torch.channels_last)
    return students


def repeated_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules whose class a module of ``net`` lists in ``_repeated_blocks`` (diffusers'
    convention; our U-Nets list ``UNetBlock``)."""
    names = set()
    for m in net.modules():
        names |= set(getattr(m, "_repeated_blocks", ()))
    return [m for m in net.modules() if type(m).__name__ in names]


def compile_network(net: torch.nn.Module, scope: str, mode: str):
    """``torch.compile`` of a network with static shapes (a training batch keeps its shape).

    ``full`` compiles the whole call. ``regional`` compiles each repeated block in place, so
    blocks of the same shape share one compiled graph across the generator, fake network and
    teacher, and compile time grows with the number of distinct blocks, not with depth; a network
    without repeated blocks is compiled whole. Returns the callable to use in place of ``net``.
    """
    blocks = repeated_blocks(net) if scope == "regional" else []
    if not blocks:
        return torch.compile(net, mode=mode, dynamic=False)
    import torch._dynamo as dynamo

    # one compiled graph per distinct block and calling context (train / eval, with / without
    # gradient): more than dynamo's default limit for one code object
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 128))
    for b in blocks:
        b.compile(mode=mode, dynamic=False)
    return net

