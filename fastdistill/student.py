"""A trained student: load it from any checkpoint or export, sample it, project with it.

    from fastdistill import load_student
    student = load_student("runs/digits")        # a run directory, a checkpoint directory, or student.safetensors
    x = student.sample(16, seed=0, cond=3)       # one-step samples of the digit 3
    y = student.project(x_noisy, sigma=0.5, steps=2, cond=3)

One-step generation is ``x = G(z) = D_theta(sigma_init z; sigma_init, c)``. A few-step SiD,
SIM or DMD student (``method.steps`` K > 1) is time-conditioned: ``x_1 = D_theta(sigma_1 z; sigma_1)``,
``x_k = D_theta(x_{k-1} + sigma_k eps_k; sigma_k)`` at its trained levels ``info.step_sigmas``
(``sigma_1 = sigma_init``), all K by default, or the first ``steps`` of them. Time-free
(idempotent) students, SIGN and IGN (docs/algorithms.md section 5), also sample in several
steps with ``f(x) = D_theta(x; sigma_init)``: ``x_1 = f(sigma_init z)``, then
``x_k = f(x_{k-1} + sigma_k eps_k)`` for the decreasing levels of
:func:`fastdistill.sampling.multistep_schedule` (the consistency-model sampler), or pure
re-application ``x_k = f(x_{k-1})`` (``schedule="reapply"``, IGN's mode).

Latents, labels and the re-noising all come from :func:`fastdistill.sampling.draw` for the
seed, as in the trainer's evaluations, ``fastdistill eval`` and the reports: one checkpoint and
seed give the same samples everywhere. Projection of an input ``y`` is the same chain started
from ``y + sigma eps_1``; projecting zeros with ``sigma = sigma_init`` and the Karras schedule
is exactly sampling.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .conditioning import Conditioning
from .engine import checkpoint as ckpt
from .engine.build import make_mlp
from .engine.config import LoRAConfig
from .engine.lora import add_lora
from .engine.run_checkpoints import load_network
from .engine.run_state import MULTISTEP_METHODS, PIXEL_STUDENT_FILE, RunState, StudentInfo, write_student_file
from .engine.shards import read_shards
from .export import STUDENT_FILE
from .metrics import EvalError
from .plotting import save_samples_picture
from .sampling import DEFAULT_SIGMA_END, draw, multistep_schedule
from .teachers import CheckpointError, load_teacher
from .teachers.checkpoint import build_teacher, decode_init_kwargs, read_teacher_extra
from .teachers.hashing import weights_hash
from .teachers.loading import teacher_location
from .teachers.traits import traits

__all__ = ["Student", "StudentInfo", "load_student", "sample", "generate", "idempotence_error", "save_samples",
           "MULTISTEP_METHODS"]

PROJECT_SCHEDULES = ("reapply", "constant", "karras")


class Student:
    """A generator network with its :class:`StudentInfo`; it is run in eval mode without gradients."""

    def __init__(self, net: torch.nn.Module, info: StudentInfo):
        self.net = net
        self.info = info

    def save_pretrained(self, path, lora: str = "merge") -> Path:
        """Write the student in its kind's one format, which :meth:`from_pretrained` (and
        :func:`load_student`) read back: a text-to-image student as a diffusers pipeline folder
        (:func:`~fastdistill.export.export_student`; ``lora``: ``merge`` or ``adapter``), any other as
        one safetensors file (``path`` when it ends in ``.safetensors``, else ``path/student.safetensors``).
        Returns what was written."""
        if self.info.cond_kind == "text":
            from .export import export_student

            return export_student(self, path, lora=lora)
        file = _student_file(Path(path))
        file.parent.mkdir(parents=True, exist_ok=True)
        return write_student_file(self.net, self.info, file)

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "Student":
        """The student :meth:`save_pretrained` wrote at ``path`` (frozen, in eval mode on ``device``)."""
        p = Path(path)
        if (p / STUDENT_FILE).is_file():
            return _exported_folder(p, device)
        file = _student_file(p)
        if not file.is_file():
            raise FileNotFoundError(f"no saved student at {str(path)!r}: expected a student .safetensors file, a folder "
                                    f"holding {PIXEL_STUDENT_FILE}, or an exported pipeline folder ({STUDENT_FILE})")
        record = read_teacher_extra(file).get("student")
        if record is None:
            raise EvalError(f"{file} is a teacher checkpoint, not an exported student (pass it as a teacher)")
        return cls(load_teacher(file, device=device), StudentInfo.from_record(record))

    @classmethod
    def from_network(cls, net, sigma_init: Optional[float] = None, method: str = "sign",
                     sigma_end: float = DEFAULT_SIGMA_END) -> "Student":
        """A student around a network in memory (e.g. a Distiller's EMA); ``sigma_init`` defaults to
        the network's ``sigma_init`` attribute, else 2.5."""
        s = float(sigma_init if sigma_init is not None else getattr(net, "sigma_init", 2.5))
        t = traits(net)
        label_dim = t.label_dim
        info = StudentInfo(method=method, sigma_init=s, data_shape=t.data_shape, label_dim=label_dim,
                           sigma_end=sigma_end, cond_kind="labels" if label_dim else "none")
        return cls(net, info)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.net.parameters()), None) if hasattr(self.net, "parameters") else None
        return p.device if p is not None else torch.device("cpu")

    def conditioning(self, cond, n: int) -> Optional[Conditioning]:
        """``cond`` for ``n`` samples: a Conditioning, one class index or one per sample, one-hot labels,
        one prompt or one per sample (text-to-image students), or None."""
        if isinstance(cond, str) or (isinstance(cond, (list, tuple)) and cond and all(isinstance(p, str) for p in cond)):
            if not traits(self.net).text:
                raise ValueError("prompts given, but the student is not a text-to-image model")
            prompts = [cond] * n if isinstance(cond, str) else list(cond)
            if len(prompts) != n:
                raise ValueError(f"need one prompt or {n}, got {len(prompts)}")
            return self.net.encode_prompt(prompts)
        if cond is None and self.info.cond_kind == "text":
            raise ValueError("the student is a text-to-image model: pass a prompt (or one per sample)")
        if cond is None or isinstance(cond, Conditioning):
            if cond is not None and cond.batch_size != n:
                raise ValueError(f"conditioning for {cond.batch_size} samples, need {n}")
            return cond
        if not self.info.label_dim:
            raise ValueError("class labels given but the student is unconditional")
        return Conditioning.from_labels(cond, self.info.label_dim, n=n)

    def apply(self, x: torch.Tensor, cond: Optional[Conditioning] = None, sigma: Optional[float] = None) -> torch.Tensor:
        """``D_theta(x; sigma, c)`` in float32; ``sigma`` defaults to ``sigma_init`` (the time-free map ``f``)."""
        sig = torch.full((x.shape[0],), self.info.sigma_init if sigma is None else float(sigma), device=x.device)
        return self.net(x, sig, cond).float()

    @torch.no_grad()
    def _chain(self, x0: torch.Tensor, cond: Optional[Conditioning], added: list, batch_size: int,
               sigmas: Optional[list] = None) -> torch.Tensor:
        """``x = f(x0)``, then ``x = f(x + e)`` for each tensor ``e`` of ``added``, in batches; on the CPU.
        ``sigmas``: the network's noise level at each application (default: ``sigma_init`` throughout)."""
        sigmas = [None] * (1 + len(added)) if sigmas is None else sigmas
        dev, out = self.device, []
        was = getattr(self.net, "training", False)
        if was:
            self.net.eval()
        try:
            for i in range(0, x0.shape[0], batch_size):
                c = None if cond is None else cond[i:i + batch_size].to(dev)
                x = self.apply(x0[i:i + batch_size].to(dev), c, sigmas[0])
                for e, s in zip(added, sigmas[1:]):
                    x = self.apply(x + e[i:i + batch_size].to(dev), c, s)
                out.append(x.cpu())
        finally:
            if was:
                self.net.train()
        return torch.cat(out) if out else torch.zeros((0, *self.info.data_shape))

    def _check_steps(self, steps: Optional[int]) -> int:
        if steps is None:
            return self.info.steps
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if steps > self.info.steps and not self.info.multistep:
            kind = (f"a {self.info.steps}-step generator (trained for at most {self.info.steps} steps)"
                    if self.info.steps > 1 else "a one-step generator")
            raise ValueError(f"this {self.info.method!r} student is {kind}; multi-step sampling with any number of "
                             f"steps is for {', '.join(MULTISTEP_METHODS)} students, few-step generators are "
                             f"trained with method.steps=K")
        return steps

    def sample(self, n: int, steps: Optional[int] = None, seed: int = 0, cond=None, schedule="karras",
               sigma_end: Optional[float] = None, batch_size: int = 1024) -> torch.Tensor:
        """``n`` samples, float32 on the CPU; class-balanced labels when conditional and ``cond`` is None.

        ``steps``: default the generator's trained steps (1, or K for a few-step student; fewer
        stop its chain early). ``steps > 1`` for SIGN / IGN students: the multi-step sampler with
        ``schedule`` ("karras", "reapply" or a list of levels) ending at ``sigma_end`` (default:
        the trained one).
        """
        n = int(n)
        if n < 0:
            raise ValueError("n must be non-negative")
        steps = self._check_steps(steps)
        if self.info.steps > 1:
            sig = list(self.info.step_sigmas[:steps])
            noises, c = draw(n, self.info.data_shape, seed, label_dim=self.info.label_dim,
                             cond=self.conditioning(cond, n), noises=steps)
            return self._chain(noises[0] * sig[0], c, [s * e for s, e in zip(sig[1:], noises[1:])], batch_size, sig)
        s = self.info.sigma_init
        levels = multistep_schedule(steps, s, schedule, self.info.sigma_end if sigma_end is None else sigma_end)
        noises, c = draw(n, self.info.data_shape, seed, label_dim=self.info.label_dim,
                         cond=self.conditioning(cond, n), noises=1 + len(levels))
        return self._chain(noises[0] * s, c, [lv * e for lv, e in zip(levels, noises[1:])], batch_size)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from samples: the VAE's decoding for latent students, else ``x`` itself."""
        return self.net.decode(x) if traits(self.net).decodes else x

    def project(self, y: torch.Tensor, sigma: float = 0.0, steps: int = 1, seed: int = 0, cond=None,
                schedule: str = "reapply", batch_size: int = 1024) -> torch.Tensor:
        """Project inputs ``y`` (N, *data_shape) onto the student's samples: ``x_1 = f(y + sigma eps_1)``,
        then ``steps - 1`` more applications: ``reapply`` (no noise), ``constant`` (``sigma`` each
        time) or ``karras`` (the multi-step sampler's levels). Larger ``sigma`` forgets more of
        the input. A conditional student needs ``cond``."""
        if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if schedule not in PROJECT_SCHEDULES:
            raise ValueError(f"schedule must be one of {PROJECT_SCHEDULES}, got {schedule!r}")
        if tuple(y.shape[1:]) != self.info.data_shape:
            raise ValueError(f"inputs of shape {tuple(y.shape[1:])}, the student's samples are {self.info.data_shape}")
        if self.info.label_dim and cond is None:
            raise ValueError(f"the student is class-conditional ({self.info.label_dim} classes): pass cond "
                             f"(a class index, one per input, or a Conditioning)")
        if schedule == "karras":
            levels = multistep_schedule(steps, self.info.sigma_init, "karras", self.info.sigma_end)
        else:
            levels = [float(sigma) if schedule == "constant" else 0.0] * (steps - 1)
        n = y.shape[0]
        noises, c = draw(n, self.info.data_shape, seed, label_dim=self.info.label_dim,
                         cond=self.conditioning(cond, n), noises=steps)
        return self._chain(y.float().cpu() + sigma * noises[0], c, [lv * e for lv, e in zip(levels, noises[1:])],
                           batch_size)

    @torch.no_grad()
    def idempotence_error(self, x: torch.Tensor, cond=None) -> float:
        """``mean |f(f(x)) - f(x)|``: how far the student is from idempotent on ``x``."""
        return idempotence_error(self.net, x.to(self.device), self.info.sigma_init, self.conditioning(cond, x.shape[0]))


# ----------------------------------------------------------------------------- loading
def _checkpoint_dir(path: Path, log=None) -> Path:
    """A checkpoint directory (verified; a corrupt one raises, naming the alternative) or a run
    directory's newest intact checkpoint (each newer corrupt one skipped is said on ``log``)."""
    try:
        return ckpt.resolve_checkpoint(path, log=log)
    except FileNotFoundError:
        raise FileNotFoundError(f"no distillation checkpoint at {path!s} (expected a checkpoint directory with "
                                f"{ckpt.STATE_FILE}, a run directory containing checkpoints/, or an exported "
                                f"student.safetensors)") from None


def _student_file(path: Path) -> Path:
    return path if path.suffix == ".safetensors" else path / PIXEL_STUDENT_FILE


def _exported_folder(folder: Path, device) -> Student:
    """A diffusers folder written by :func:`~fastdistill.export.export_student`: the pipeline is the
    student's network (the folder is its own teacher from here on)."""
    import json

    info = json.loads((folder / STUDENT_FILE).read_text())
    if "student" not in info:
        raise CheckpointError(f"{folder / STUDENT_FILE} has no student record: export it again with this version")
    if info.get("lora") == "adapter":
        raise CheckpointError(f"{folder} holds the student as LoRA adapters beside the teacher's weights: load it in "
                              f"diffusers with pipe.load_lora_weights, or export with --lora merge for fastdistill")
    return Student(load_teacher(folder, device=device), StudentInfo.from_record({**info["student"], "teacher": str(folder)}))


def _rebuild(state: RunState, network: Optional[torch.nn.Module], on_teacher: bool, where) -> torch.nn.Module:
    """The generator's architecture, from the checkpoint's record (or ``network``, for a teacher that
    was a Python object): a registered class, the fitted MLP, or the teacher checkpoint itself;
    with the run's LoRA adapters when it trained them. ``on_teacher``: the checkpoint holds the
    adapters only (LoRA on the teacher's own weights), so the network is the run's teacher, checked
    against the hash the run recorded."""
    if network is not None:
        net = copy.deepcopy(network)
    elif state.arch_config and not on_teacher:
        arch = state.arch_config
        net = build_teacher(arch["class_name"], decode_init_kwargs(arch["init_kwargs"]))
    elif state.arch:
        net = make_mlp(state.arch)
    elif state.config["teacher"]["kind"] == "checkpoint":
        teacher = state.config["teacher"]
        try:
            net = load_teacher(teacher["path"], resolution=teacher.get("resolution") or None)
        except FileNotFoundError as exc:  # load_teacher's own wording suggests other teachers: say what happened
            if os.path.exists(teacher_location(teacher["path"])):
                raise  # a file missing inside it, named by the loader
            raise FileNotFoundError(f"the run's teacher {teacher['path']!r} is not there any more (moved or deleted): "
                                    f"its student is built on it; put it back at that path") from exc
    else:
        raise ValueError("the generator's architecture came from a Python object; pass network=<module>")
    recorded = (state.identity or {}).get("teacher_sha256")
    if on_teacher and weights_hash(net) != recorded:
        raise CheckpointError(f"{where} holds the student's LoRA adapters only; their base is the run's teacher, "
                              f"whose weights have changed since (their hash is not the one the run recorded): "
                              f"load it with the teacher the run was trained on")
    lora = LoRAConfig(**state.config.get("lora", {}))
    if lora.rank and lora.networks in ("both", "generator"):
        add_lora(net, lora)
    return net


def load_student(path, which: str = "ema", device="cpu", network: Optional[torch.nn.Module] = None,
                 log: Optional[Callable[[str], None]] = None) -> Student:
    """The student in ``path``: a run directory (its newest intact checkpoint; each newer corrupt one
    skipped is reported to ``log``, default stderr), a checkpoint directory (verified: a corrupt one
    raises :class:`~fastdistill.engine.checkpoint.CheckpointCorruptError`; a sharded one, from
    ``distributed.strategy=fsdp``, is assembled here from every rank's shards), an exported
    ``student.safetensors``, or a text-to-image student exported as a diffusers folder (``fastdistill
    export``, LoRA merged). ``which``: the ``ema`` or raw ``generator`` weights (checkpoints only)."""
    if which not in ("ema", "generator"):
        raise ValueError(f"which must be 'ema' or 'generator', got {which!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"student {str(path)!r} not found (give a run directory, a checkpoint directory, "
                                f"an exported student.safetensors or an exported pipeline folder)")
    if p.is_file() or (p / STUDENT_FILE).is_file():
        return Student.from_pretrained(p, device)
    where = _checkpoint_dir(p, log)
    try:
        tensors, state = ckpt.load_checkpoint(where, log=log)
    except ckpt.CheckpointCorruptError:
        if where.exists() or where == p:
            raise
        where = _checkpoint_dir(p, log)  # pruned by a live run since it was verified: its newest again
        tensors, state = ckpt.load_checkpoint(where, log=log)
    state = RunState.from_dict(state, p)
    from_teacher = state.from_teacher.get(which, ())
    net = _rebuild(state, network, bool(from_teacher), where)
    if state.sharded:
        net.load_state_dict(read_shards(where, which))
    else:
        load_network(net, tensors[which], from_teacher, f"{where}: its {which}")
    return Student(net.to(device).eval().requires_grad_(False), state.student)


# ----------------------------------------------------------------------------- functional forms
@torch.no_grad()
def generate(net, z: torch.Tensor, sigma_s: float, cond=None, steps: int = 1, schedule="karras",
             generator: Optional[torch.Generator] = None, sigma_end: float = DEFAULT_SIGMA_END,
             rho: float = 7.0) -> torch.Tensor:
    """The multi-step sampler on given latents ``z`` with a network in memory: ``x_1 = f(sigma_s z)``,
    then ``x_k = f(x_{k-1} + sigma_k eps_k)``; the ``eps_k`` come from ``generator`` (CPU)."""
    levels = multistep_schedule(steps, sigma_s, schedule, sigma_end, rho)
    student = Student.from_network(net, sigma_s, sigma_end=sigma_end)
    added = [lv * torch.randn(z.shape, generator=generator, dtype=torch.float32) for lv in levels]
    return student._chain(z * sigma_s, None if cond is None else student.conditioning(cond, z.shape[0]), added,
                          max(1, z.shape[0])).to(z.device)


@torch.no_grad()
def idempotence_error(net, x: torch.Tensor, sigma_s: float, cond=None) -> float:
    """``mean |f(f(x)) - f(x)|`` for the time-free map ``f(x) = net(x, sigma_s, cond)``."""
    sig = torch.full((x.shape[0],), float(sigma_s), device=x.device)
    fx = net(x, sig, cond).float()
    return float((net(fx, sig, cond).float() - fx).abs().mean())


def sample(path, n: int, seed: int = 0, cond=None, which: str = "ema", device="cpu",
           network: Optional[torch.nn.Module] = None, steps: Optional[int] = None, schedule="karras",
           sigma_end: Optional[float] = None, batch_size: int = 1024) -> torch.Tensor:
    """``load_student(path, ...).sample(n, ...)``."""
    return load_student(path, which, device, network).sample(n, steps=steps, seed=seed, cond=cond, schedule=schedule,
                                                             sigma_end=sigma_end, batch_size=batch_size)


def save_samples(x: torch.Tensor, png_path=None, npz_path=None, ncol: Optional[int] = None) -> dict:
    """Write a picture (image grid, ``ncol`` per row, or 2-D scatter) and/or an .npz (key ``samples``)."""
    out = {}
    if png_path:
        out["png"] = str(save_samples_picture(x, png_path, ncol=ncol))
    if npz_path:
        np.savez(npz_path, samples=x.detach().cpu().numpy())
        out["npz"] = str(npz_path)
    return out
