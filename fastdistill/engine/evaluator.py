"""Sample quality during training: the record the loop logs, and how it is measured.

Image runs with evaluation data (``eval_data``, else ``data``, else digits for the digits
teacher) track FID in the digits classifier's features; vector runs with an analytic teacher
track the sliced Wasserstein-2 distance to exact data samples. Either way the record carries the
data-vs-data baseline and the teacher's 35-evaluation Heun score at the same ``n``, computed
once, so every logged student number has its floor and its target beside it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..methods import ConfigError
from ..metrics import sliced_wasserstein
from ..metrics.quality import ReferenceData, quality, reference_data
from ..sampling import draw, sample
from ..teachers.traits import TeacherTraits, traits
from ..teachers.hashing import weights_hash

__all__ = ["Quality", "LoopEvaluator", "teacher_samples", "teacher_nfe", "read_jsonl", "plot_run_curve"]

TEACHER_SEED = 1  # the seed of the teacher's evaluation samples (the reports and `fastdistill eval` use it too)
_TEACHER_CACHE: dict = {}


@dataclass
class Quality:
    """One evaluation of a run: ``metric`` is "fid" (images) or "sw" (vector data); lower is better."""

    metric: str
    data_vs_data: float
    teacher_heun35: float
    student: Optional[float] = None
    initial: Optional[float] = None  # the generator before distillation

    def log_row(self) -> dict:
        """The JSONL / TensorBoard keys: ``fid_student``, ``fid_teacher_heun35``, ..."""
        names = ("data_vs_data", "teacher_heun35", "student", "initial")
        return {f"{self.metric}_{k}": getattr(self, k) for k in names if getattr(self, k) is not None}


def teacher_nfe(steps: int, solver: str) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


def _fingerprint(net) -> str:
    """The cache key of a teacher: the hash of its weights (the run identity's), else the object."""
    if not isinstance(net, torch.nn.Module):
        return f"{type(net).__name__}:{id(net)}"
    return weights_hash(net)


def teacher_samples(teacher, n: int, steps: int = 18, solver: str = "heun", seed: int = TEACHER_SEED,
                    batch_size: int = 1024, cache: bool = True, cache_dir=None) -> tuple[torch.Tensor, float]:
    """``n`` teacher samples (EDM sampler, class-balanced labels of :func:`fastdistill.sampling.draw`)
    and the wall time per sample in seconds (after a warm-up batch).

    Cached per teacher weights / n / steps / solver / seed in this process, and in ``cache_dir``
    when given, so concurrent runs (the digits report's workers) sample the teacher once.
    """
    key = (_fingerprint(teacher), int(n), int(steps), solver, int(seed))
    if cache and key in _TEACHER_CACHE:
        return _TEACHER_CACHE[key]
    fname = Path(cache_dir) / f"teacher-{key[0][:16]}-n{n}-{solver}{steps}-seed{seed}-balanced.pt" if cache and cache_dir else None
    if fname is not None and fname.is_file():
        try:
            d = torch.load(fname, weights_only=True)
            _TEACHER_CACHE[key] = (d["x"], float(d["sec"]))
            return _TEACHER_CACHE[key]
        except (OSError, RuntimeError, KeyError, EOFError):
            pass  # a damaged cache file is recomputed and replaced
    _, cond = draw(n, (), seed, label_dim=traits(teacher).label_dim, noises=0)
    labels = None if cond is None else cond.labels
    sample(teacher, min(n, 8), seed=seed, num_steps=steps, solver=solver,
           class_labels=None if labels is None else labels[:8])  # warm-up
    t0 = time.perf_counter()
    x = sample(teacher, n, seed=seed, num_steps=steps, solver=solver, batch_size=batch_size, class_labels=labels).float().cpu()
    sec = (time.perf_counter() - t0) / max(n, 1)
    if cache:
        _TEACHER_CACHE[key] = (x, sec)
    if fname is not None:
        fname.parent.mkdir(parents=True, exist_ok=True)
        tmp = fname.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "sec": sec}, tmp)
        os.replace(tmp, fname)
    return x, sec


class LoopEvaluator:
    """FID (images) or sliced Wasserstein-2 (vector data) of student samples, with the baselines.

    ``LoopEvaluator.for_run(cfg, teacher, traits)`` is None when the run has nothing to compare
    with. ``quality(x)`` scores samples; ``reference`` / ``teacher_x`` are what the pictures show.
    """

    def __init__(self, metric: str, n: int, teacher, ref: Optional[ReferenceData] = None, cache_dir=None):
        self.metric, self.n, self.teacher, self.ref, self.cache_dir = metric, int(n), teacher, ref, cache_dir
        self._baselines: Optional[tuple[float, float]] = None
        self.data = self.teacher_x = None

    @classmethod
    def for_run(cls, cfg, teacher, t: TeacherTraits) -> Optional["LoopEvaluator"]:
        if cfg.eval_data == "none":  # off for every kind of data
            return None
        shape = t.data_shape
        if len(shape) == 1:
            return cls("sw", cfg.eval_samples, teacher) if t.exact_samples else None
        name = cfg.eval_data or cfg.data or ("digits" if cfg.teacher.path == "digits" else "")
        if len(shape) != 3 or not name:
            return None
        if importlib.util.find_spec("torch_fidelity") is None:  # before any work, not at the first evaluation
            raise ConfigError(f"FID tracking (eval_data={name}) needs torch-fidelity: pip install 'torch-fidelity>=0.4'; "
                              f"or set eval_data=none to train without it")
        ref = reference_data(name)
        if ref.data_shape != tuple(shape):
            raise ConfigError(f"eval_data {name!r} has sample shape {ref.data_shape}, the teacher {tuple(shape)}")
        cap = ref.max_n()
        return cls("fid", min(cfg.eval_samples, cap) if cap is not None else cfg.eval_samples, teacher, ref,
                   cfg.eval_cache or None)

    def _score(self, x: torch.Tensor) -> float:
        if self.metric == "fid":
            return quality(x, self.ref, full=False)["fid"]
        return float(sliced_wasserstein(x.float().cpu(), self.data, seed=1))

    @torch.no_grad()
    def _compute_baselines(self) -> tuple[float, float]:
        if self.metric == "fid":
            floor = quality(self.ref.baseline_set(self.n), self.ref, full=False)["fid"]
            x, _ = teacher_samples(self.teacher, self.n, steps=18, solver="heun", cache_dir=self.cache_dir)
            return floor, self._score(x)
        g = torch.Generator().manual_seed(9_000_001)
        self.data = self.teacher.sample(self.n, generator=g).float().cpu()
        data2 = self.teacher.sample(self.n, generator=g).float().cpu()
        self.teacher_x = sample(self.teacher, self.n, seed=9_000_002, num_steps=18, solver="heun").float().cpu()
        return float(sliced_wasserstein(self.data, data2, seed=1)), self._score(self.teacher_x)

    def quality(self, x: Optional[torch.Tensor] = None) -> Quality:
        """The baselines, and the student's score for samples ``x`` when given."""
        if self._baselines is None:
            self._baselines = self._compute_baselines()
        floor, teacher = self._baselines
        return Quality(self.metric, floor, teacher, student=None if x is None else self._score(x))


def read_jsonl(path) -> list:
    """The rows of a JSONL file (missing file: none; unreadable lines are skipped)."""
    rows = []
    p = Path(path)
    if p.is_file():
        for line in p.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def plot_run_curve(out_dir, label: str) -> Optional[Path]:
    """``fid_vs_iterations.png`` (images) or ``sw_vs_iterations.png`` (vector data) in a run
    directory, from its ``metrics.jsonl``, with the data-vs-data and teacher levels dashed."""
    from ..plotting import line_plot

    out_dir = Path(out_dir)
    hist = read_jsonl(out_dir / "metrics.jsonl")
    q = "fid" if any("fid_student" in r or "fid_initial" in r for r in hist) else "sw"
    pts = [(0, r[f"{q}_initial"]) for r in hist if f"{q}_initial" in r]
    pts += [(r["step"], r[f"{q}_student"]) for r in hist if f"{q}_student" in r]
    if not pts:
        return None
    names = {f"{q}_teacher_heun35": "teacher Heun 35 NFE", f"{q}_data_vs_data": "data vs data"}
    hlines = {}
    for r in hist:
        hlines.update({names[k]: r[k] for k in names if k in r})
    title = ("FID (digits features) vs distillation iterations" if q == "fid"
             else "sliced Wasserstein-2 to the data vs distillation iterations")
    return line_plot({label: pts}, out_dir / f"{q}_vs_iterations.png", title=title, xlabel="distillation iterations",
                     ylabel=q.upper(), hlines=hlines)
