"""Compare students and teachers on the same footing: ``fastdistill eval``.

    from fastdistill.evaluation import evaluate_models, Model, format_table
    res = evaluate_models([Model.teacher("digits", steps=18, solver="heun"),
                           Model.student("runs/digits")], data="digits", n=898)
    print(format_table(res)); res.save("eval.json")

Per model (a teacher with the EDM Heun/Euler sampler at any number of steps, or a distilled
student in one step, or k for SIGN/IGN students): the metrics of
:mod:`fastdistill.metrics.quality` against one reference set at one ``n`` (FID, KID,
precision/recall on images; sliced Wasserstein-2 and MMD on vector data), the wall time per
sample after one warm-up batch, and the network evaluations (NFE) per sample. The table's
first line is the data-versus-data baseline at that ``n``: the noise floor of the metric.
Samples come from :func:`fastdistill.sampling.draw` for the seed, as everywhere else.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .data import ToyDataset
from .engine.evaluator import TEACHER_SEED, teacher_nfe, teacher_samples
from .metrics.quality import EvalError, quality, reference_data
from .sampling import data_shape_of
from .student import Student, load_student
from .teachers import load_teacher
from .teachers.loading import ANALYTIC_PREFIX
from .teachers.traits import traits

__all__ = ["Model", "EvalRow", "EvalResult", "evaluate_models", "format_table", "student_samples", "load_models",
           "score_models"]


def student_samples(student: Student, n: int, steps: Optional[int] = None, seed: int = TEACHER_SEED,
                    batch_size: int = 1024) -> tuple[torch.Tensor, float]:
    """``n`` samples of ``student`` (:meth:`Student.sample`; ``steps`` default its trained steps) and the wall
    time per sample (after a warm-up call)."""
    student.sample(min(n, 8), steps=steps, seed=seed)
    t0 = time.perf_counter()
    x = student.sample(n, steps=steps, seed=seed, batch_size=batch_size)
    return x, (time.perf_counter() - t0) / max(n, 1)


@dataclass
class Model:
    """What to evaluate: ``Model.teacher(spec, steps, solver, guidance)`` or ``Model.student(path, steps)``.
    ``guidance``: a text-to-image teacher's classifier-free guidance (1: none)."""

    kind: str  # teacher | student
    spec: Any  # teacher spec / student path
    steps: Optional[int] = 1  # a student's None: its trained steps
    solver: str = "heun"
    guidance: float = 1.0
    label: str = ""

    @classmethod
    def teacher(cls, spec="digits", steps: int = 18, solver: str = "heun", guidance: float = 1.0,
                label: str = "") -> "Model":
        if solver not in ("heun", "euler"):
            raise EvalError(f"solver must be heun or euler, got {solver!r}")
        if int(steps) < 1:
            raise EvalError(f"teacher steps must be >= 1, got {steps}")
        return cls("teacher", spec, int(steps), solver, float(guidance), label)

    @classmethod
    def student(cls, path, steps: Optional[int] = None, label: str = "") -> "Model":
        return cls("student", path, None if steps is None else int(steps), "", 1.0, label)


@dataclass
class EvalRow:
    """One model's line: what it is, its cost per sample (network evaluations, network passes, wall
    time) and its ``metrics`` (FID, KID, precision, recall; or SW2, MMD; CLIP score)."""

    model: str  # teacher | student
    source: str
    label: str
    steps: int
    nfe: int
    passes: int
    ms_per_sample: float
    metrics: dict
    solver: Optional[str] = None  # teachers
    guidance: Optional[float] = None  # text-to-image teachers
    method: Optional[str] = None  # students
    train_step: Optional[int] = None

    def to_dict(self) -> dict:
        """The row as one flat JSON object (metrics beside the rest; absent fields left out)."""
        d = {k: v for k, v in asdict(self).items() if k != "metrics" and v is not None}
        return {**d, **self.metrics}


@dataclass
class EvalResult:
    data: str
    n: int
    metric_space: str
    baseline: dict
    reference_n: int = 0
    rows: list = field(default_factory=list)  # EvalRow
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rows": [r.to_dict() for r in self.rows]}

    def save(self, path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return str(path)


def load_models(models: Sequence[Model], device) -> dict:
    """Every model loaded before any is sampled (a missing checkpoint fails fast), by ``id(model)``."""
    if not models:
        raise EvalError("nothing to evaluate: give at least one teacher or student")
    loaded = {}
    for m in models:
        if m.kind == "teacher":
            loaded[id(m)] = m.spec if not isinstance(m.spec, (str, os.PathLike)) else load_teacher(m.spec, device=device)
        else:
            loaded[id(m)] = load_student(m.spec, device=device)
    return loaded


def score_models(models: Sequence[Model], loaded: dict, samples: Callable, measure: Callable,
                 progress: Optional[Callable] = None) -> list:
    """The rows of ``models``: ``samples(model, obj) -> (x, seconds per sample)``, ``measure(x) ->
    metrics``; ``progress(row)`` after each."""
    rows = []
    for m in models:
        obj = loaded[id(m)]
        x, sec = samples(m, obj)
        if m.kind == "teacher":
            nfe = teacher_nfe(m.steps, m.solver)
            guided, text = m.guidance != 1, traits(obj).text
            label = m.label or (f"teacher {m.solver.capitalize()} {m.steps} step{'s' if m.steps > 1 else ''}"
                                + (f", guidance {m.guidance:g}" if guided or text else ""))
            row = EvalRow("teacher", str(m.spec) if isinstance(m.spec, (str, os.PathLike)) else type(obj).__name__,
                          label, m.steps, nfe, nfe * (2 if guided else 1), 1000.0 * sec, measure(x),
                          solver=m.solver, guidance=m.guidance if text else None)
        else:
            k = obj.info.steps if m.steps is None else m.steps
            row = EvalRow("student", str(m.spec), m.label or f"student {obj.info.method} {k} step{'s' if k > 1 else ''}",
                          k, k, k, 1000.0 * sec, measure(x), method=obj.info.method, train_step=obj.info.step)
        rows.append(row)
        if progress:
            progress(row)
    return rows


def _toy_data(name: str, teacher) -> ToyDataset:
    return ToyDataset(name, lambda n, g: teacher.sample(n, generator=g), dim=int(torch.Size(teacher.data_shape).numel()))


def _default_data_for(models: Sequence[Model], loaded: dict) -> Any:
    """The data a teacher or student was made for: digits, or an analytic teacher's distribution."""
    for m in models:
        obj = loaded.get(id(m))
        spec = m.spec if m.kind == "teacher" else (obj.info.teacher if obj is not None else None)
        if not isinstance(spec, str):
            continue
        if spec == "digits" or spec.endswith("digits_teacher.safetensors"):
            return "digits"
        if spec.startswith(ANALYTIC_PREFIX):
            teacher = obj if m.kind == "teacher" else load_teacher(spec)
            return _toy_data(spec[len(ANALYTIC_PREFIX):], teacher)
    return None


def evaluate_models(models: Sequence[Model], data=None, n: Optional[int] = None, *, extractor: str = "digits",
                    seed: int = TEACHER_SEED, full: bool = True, device="cpu", progress=None) -> EvalResult:
    """Sample every model with the same ``n`` and seed, score it against the same reference set.

    ``data``: dataset name/path/DataSource (default: digits for digits teachers/students, the
    toy distribution for analytic teachers). ``n``: samples per model (default: the held-out
    size for finite data, 898 on digits; 4096 for toys).
    """
    t_start = time.perf_counter()
    loaded = load_models(models, device)
    if data is None:
        data = _default_data_for(models, loaded)
        if data is None:
            raise EvalError("cannot tell which data to compare with: pass data= (--data), e.g. digits or a .npz file")
    ref = reference_data(data, n)
    cap = ref.max_n()
    if n is None:
        n = cap if cap is not None else ref.reference.shape[0]
    n = int(n)
    if cap is not None and n > cap:
        raise EvalError(f"n={n} is larger than the held-out half of {ref.name!r} ({cap} samples), which gives the "
                        f"data-vs-data baseline at the same n; use n <= {cap}")
    if n < 2:
        raise EvalError(f"n must be >= 2, got {n}")
    for m in models:
        obj = loaded[id(m)]
        if m.guidance != 1:
            raise EvalError(f"teacher {m.spec!s}: guidance is for text-to-image teachers "
                            f"(fastdistill.evaluation_t2i.evaluate_text_to_image)")
        shape = obj.info.data_shape if m.kind == "student" else data_shape_of(obj)
        if tuple(shape) != ref.data_shape:
            raise EvalError(f"{m.kind} {m.spec!s} makes samples of shape {tuple(shape)} but the data {ref.name!r} "
                            f"have shape {ref.data_shape}")
    space = "digits classifier features (FID/KID/precision/recall)" if ref.kind == "image" else \
        "sliced Wasserstein-2 / MMD in data space"
    if ref.kind == "image" and extractor != "digits":
        space = f"{extractor} features (FID/KID/precision/recall)"
    base = quality(ref.baseline_set(n), ref, full=full, extractor=extractor)
    res = EvalResult(data=ref.name, n=n, metric_space=space, baseline=base, reference_n=int(ref.reference.shape[0]))

    def samples(m: Model, obj):
        if m.kind == "teacher":
            return teacher_samples(obj, n, steps=m.steps, solver=m.solver, seed=seed)
        try:
            return student_samples(obj, n, steps=m.steps, seed=seed)
        except ValueError as exc:
            raise EvalError(str(exc)) from exc

    res.rows = score_models(models, loaded, samples, lambda x: quality(x, ref, full=full, extractor=extractor), progress)
    res.elapsed_s = time.perf_counter() - t_start
    return res


def format_value(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def format_table(res: EvalResult) -> str:
    """A plain-text table: baseline first, then one line per model."""
    image = "fid" in res.baseline
    cols = (["fid", "kid_mean", "precision", "recall"] if image else ["sw", "mmd"])
    heads = {"fid": "FID", "kid_mean": "KID", "precision": "prec", "recall": "recall", "sw": "SW2", "mmd": "MMD"}
    lines = [f"{res.data}: n={res.n} samples per model against {res.reference_n} reference points; "
             f"metrics: {res.metric_space}; lower FID/KID/SW2/MMD and higher precision/recall are better"]
    head = f"{'model':<34} {'NFE':>4} " + " ".join(f"{heads[c]:>8}" for c in cols) + f" {'ms/sample':>10}"
    lines += [head, "-" * len(head)]
    lines.append(f"{'data vs data (held-out, same n)':<34} {'-':>4} " + " ".join(f"{format_value(res.baseline.get(c), 4 if c in ('kid_mean', 'mmd', 'sw') else 3):>8}" for c in cols) + f" {'-':>10}")
    for r in res.rows:
        lines.append(f"{r.label[:34]:<34} {r.nfe:>4} "
                     + " ".join(f"{format_value(r.metrics.get(c), 4 if c in ('kid_mean', 'mmd', 'sw') else 3):>8}" for c in cols)
                     + f" {r.ms_per_sample:>10.3f}")
    return "\n".join(lines)
