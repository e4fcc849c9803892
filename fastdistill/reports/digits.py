"""The embedded default (``fastdistill distill`` with no preset): the shipped digits teacher
against one-step SiD, SIM and DMD students, in at most 10 minutes on 2 CPU cores.

    from fastdistill.reports.digits import digits_report, format_report
    rep = digits_report("runs/digits")
    print(format_report(rep))

What it does, in ``out_dir``:

1. the teacher with the EDM Heun and Euler samplers at 1, 2, 4, 8 and 18 steps (Heun: 2N-1
   network evaluations, so 18 steps = 35 NFE): FID / KID / precision / recall against the
   reference half of the digits, and the time per sample;
2. SiD, SIM and DMD students (presets ``digits``, ``digits-sim``, ``digits-dmd``), distilled
   from the shipped teacher, each logging FID every ``eval_every`` steps; run concurrently,
   one torch thread each (``workers`` processes);
3. the one-step students scored exactly like the teacher (same n, same reference set, same
   latents and labels), time per sample measured alone on one thread after the runs;
4. ``report.json``, ``report.txt`` (the table), and pictures: ``teacher_samples.png`` (the
   teacher at every step count, same latents), ``samples.png`` (data, teacher 35 NFE, each
   student, same seed), ``fid_vs_iterations.png`` (one curve per method, teacher and
   data-vs-data levels dashed), and each run's own directory (``sid/``, ``sim/``, ``dmd/``).

All FIDs use the same n (898: the held-out half of the 1797 digits) and the table's first line
is the data-vs-data FID at that n (held-out half vs reference half): the floor of the metric.
FID at this n moves by a few hundredths between sample draws, as much as the gaps that matter,
so the rows that decide the verdict (teacher at 35 NFE, each student) are the mean and spread
of ``draws`` independent draws, and the verdict compares the means against that spread.
A wall-clock ``budget_s`` (default 570 s, so the command with its start-up stays within 10 minutes) caps the whole report: a run still going when its
share of the budget is spent stops and is evaluated from its last state (the report says so).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..engine import ConfigError, Distiller, preset_config
from ..engine.evaluator import read_jsonl, teacher_nfe, teacher_samples
from ..evaluation import Model, score_models, student_samples
from ..metrics.quality import DIGITS_N, quality, reference_data
from ..plotting import labelled_rows, line_plot
from ..student import load_student
from ..teachers import load_teacher
from .common import merge_draws, pool, report_footer, run_progress

METHOD_PRESETS = {"sid": "digits", "sim": "digits-sim", "dmd": "digits-dmd"}
#: overrides the report sets itself or that would change what its table compares
REFUSED_OVERRIDES = ("method.name", "teacher.kind", "teacher.path", "teacher.name", "eval_samples", "eval_data",
                     "eval_cache", "resume", "out_dir")
TEACHER_STEPS = (1, 2, 4, 8, 18)
HEADLINE = ("heun", 18)  # the teacher setting the students are judged against (35 NFE)
SOLVERS = ("heun", "euler")
REPORT_SEED = 1
DEFAULT_OUT = "runs/digits"


@dataclass
class DigitsReport:
    out_dir: str
    n: int
    baseline: dict
    teacher_rows: list = field(default_factory=list)
    student_rows: list = field(default_factory=list)
    pictures: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    phases_s: dict = field(default_factory=dict)
    verdicts: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- worker tasks
def _scored(model: Model, loaded, samples, draw: int, ref) -> dict:
    """One draw's row of a loaded teacher or student as the evaluation core labels and times it
    (:func:`~fastdistill.evaluation.score_models`); ``samples(obj, seed) -> (x, seconds per sample)``.
    Draw 0 gets every metric, further draws FID only."""
    (row,) = score_models([model], {id(model): loaded}, lambda m, obj: samples(obj, REPORT_SEED + draw),
                          lambda x: quality(x, ref, full=draw == 0))
    return dict(row.to_dict(), draw=draw)


def _teacher_task(teacher_spec, solver: str, steps: int, n: int, draw: int, cache_dir: str) -> dict:
    """One teacher draw (its samples cached in ``cache_dir``)."""
    return _scored(Model.teacher(teacher_spec, steps, solver), load_teacher(teacher_spec),
                   lambda t, seed: teacher_samples(t, n, steps=steps, solver=solver, seed=seed, cache_dir=cache_dir),
                   draw, reference_data("digits"))


def _student_quality(run_dir: str, n: int, draws: int, ref) -> dict:
    """The student (EMA) of a finished or stopped run, over ``draws`` draws."""
    student = load_student(run_dir)
    return merge_draws([_scored(Model.student(run_dir), student, lambda s, seed: student_samples(s, n, seed=seed), k,
                                ref) for k in range(draws)])


def _student_config(method: str, run_dir: str, teacher_spec: str, n: int, cache_dir: str, overrides: Sequence[str]):
    """The preset of ``method`` for the report: its teacher, the table's n, the shared teacher-sample cache."""
    cfg = preset_config(METHOD_PRESETS[method]).with_overrides(list(overrides))
    cfg.out_dir = run_dir
    cfg.resume = "none"
    cfg.eval_samples = n  # the same n as the table (and the teacher's 35-NFE samples come from the cache)
    cfg.eval_cache = cache_dir
    cfg.teacher.path = os.fspath(teacher_spec)
    return cfg.validate()


def _student_task(method: str, run_dir: str, teacher_spec: str, n: int, draws: int, deadline: float,
                  overrides: Sequence[str], cache_dir: str) -> dict:
    cfg = _student_config(method, run_dir, teacher_spec, n, cache_dir, overrides)
    stopped = {"early": False}

    def cb(d, row):
        if time.time() > deadline and not stopped["early"]:
            d.request_stop(f"the report's time budget is spent; to continue this student alone: fastdistill distill "
                           f"--preset {METHOD_PRESETS[method]} out_dir={run_dir} resume=auto")
            stopped["early"] = True

    t0 = time.time()
    d = Distiller(cfg, callback=cb)
    res = d.run()
    train_s = time.time() - t0
    k = d.method.steps
    name = method.upper() if method != "sid" else "SiD"
    row = dict(_student_quality(run_dir, n, draws, d.evaluator.ref), label=f"{name} student, {k} step{'s' if k > 1 else ''}",
               train_steps=res.step, train_s=train_s, stopped_early=stopped["early"], run_dir=run_dir)
    row["fid_initial"] = d.initial_quality
    return row


# ----------------------------------------------------------------------------- the report
def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse the overrides the report sets itself (each student's method, teacher, n, directory)."""
    refused = [o for o in overrides if o.split("=", 1)[0].strip() in REFUSED_OVERRIDES]
    if refused:
        raise ConfigError(f"the digits report sets {', '.join(o.split('=', 1)[0] for o in refused)} itself: "
                          f"use --methods / --teacher, or run one student with --preset digits")


def digits_report(out_dir=DEFAULT_OUT, budget_s: float = 570.0, *, methods: Sequence[str] = ("sid", "sim", "dmd"),
                  teacher="digits", n: int = DIGITS_N, draws: int = 3, teacher_steps: Sequence[int] = TEACHER_STEPS,
                  solvers: Sequence[str] = SOLVERS, workers: int = 3, overrides: Sequence[str] = (),
                  log=print, progress_every: float = 30.0) -> DigitsReport:
    """Run the digits report (see the module docstring); returns a :class:`DigitsReport`.

    ``budget_s``: wall-clock cap of the whole report. ``draws``: sample draws averaged for the
    teacher at 35 NFE and for each student. ``workers``: concurrent student runs (one torch
    thread each; the teacher table uses ``min(workers, 2)`` processes so its timings are one
    core each). ``overrides``: config overrides applied to every student run (e.g.
    ``["steps=200"]``; checked before any work starts). ``log``: progress messages (None:
    silent), with each student's step and latest FID every ``progress_every`` seconds.
    """
    log = log or (lambda *a, **k: None)
    t_start = time.time()
    unknown = [m for m in methods if m not in METHOD_PRESETS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; the digits report runs {', '.join(METHOD_PRESETS)}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    check_overrides(overrides)
    out = Path(out_dir)
    cache = str(out / "cache")
    for m in methods:  # a bad override fails now, not after the teacher table
        _student_config(m, str(out / m), teacher, n, cache, overrides)
    out.mkdir(parents=True, exist_ok=True)
    for m in methods:  # the report's own student runs: a new report replaces them
        if (out / m).exists():
            log(f"[digits report] replacing the previous report's {m} run in {out / m}")
            shutil.rmtree(out / m)
    ref = reference_data("digits")
    n = int(min(n, ref.max_n()))
    base = quality(ref.baseline_set(n), ref)
    rep = DigitsReport(out_dir=str(out), n=n, baseline=base)
    # 1. the teacher table: the 35-NFE run first (the students' baseline reads it from the cache)
    t1 = time.time()
    settings = {(s, k) for s in solvers for k in teacher_steps} | {HEADLINE}
    jobs = sorted([(s, k, 0) for s, k in settings] + [(*HEADLINE, d) for d in range(1, draws)],
                  key=lambda j: (j[2], -teacher_nfe(j[1], j[0])))
    log(f"[digits report] teacher: {len(settings)} sampler settings ({draws} draws at 35 NFE), n={n} each ...")
    with pool(max(1, min(workers, 2))) as executor:
        rows = [f.result() for f in [executor.submit(_teacher_task, teacher, s, k, n, d, cache) for s, k, d in jobs]]
    merged = [merge_draws([r for r in rows if (r["solver"], r["steps"]) == sk]) for sk in settings]
    rep.teacher_rows = sorted(merged, key=lambda r: (SOLVERS.index(r["solver"]) if r["solver"] in SOLVERS else 9, r["steps"]))
    rep.phases_s["teacher"] = time.time() - t1
    for r in rep.teacher_rows:
        log(f"  {r['label']:<24} NFE {r['nfe']:>2}  FID {r['fid']:.3f}")
    # 2. the students, concurrently
    t2 = time.time()
    reserve = 25.0  # phase 3: timing and pictures
    deadline = t_start + budget_s - reserve
    log(f"[digits report] distilling {', '.join(methods)} ({workers} processes, one thread each; "
        f"{max(0.0, deadline - time.time()):.0f} s left in the budget) ...")
    with pool(max(1, min(workers, len(methods)))) as executor:
        futs = {m: executor.submit(_student_task, m, str(out / m), teacher, n, draws, deadline, tuple(overrides), cache)
                for m in methods}
        pending = set(futs.values())
        while pending:
            pending = wait(pending, timeout=progress_every).not_done
            if pending:
                log(f"  {time.time() - t2:4.0f} s  " + "   ".join(run_progress(m, out / m) for m in methods))
        srows = {m: f.result() for m, f in futs.items()}
    rep.phases_s["students"] = time.time() - t2
    # 3. time per sample of each student alone (one thread), pictures
    t3 = time.time()
    _finish(rep, srows, methods, teacher, ref, out, log)
    rep.phases_s["timing_and_pictures"] = time.time() - t3
    rep.elapsed_s = time.time() - t_start
    (out / "report.json").write_text(json.dumps(rep.to_dict(), indent=2))
    (out / "report.txt").write_text(format_report(rep) + "\n")
    return rep


def _finish(rep: DigitsReport, srows: dict, methods, teacher, ref, out: Path, log) -> None:
    """Each student's time per sample alone on one thread, the verdicts, then the pictures."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        students = {}
        for m in methods:
            r = srows[m]
            students[m] = load_student(r["run_dir"])
            _, sec = student_samples(students[m], 256, seed=REPORT_SEED)
            r["ms_per_sample"] = 1000 * sec
            rep.student_rows.append(r)
        head = next(x for x in rep.teacher_rows if (x["solver"], x["steps"]) == HEADLINE)
        rep.verdicts = [_verdict(r, head) for r in rep.student_rows]
        try:  # pictures last: a missing optional plotting library loses nothing else
            _pictures(rep, srows, students, head, load_teacher(teacher), ref, out)
        except ImportError as exc:
            log(f"[digits report] pictures skipped: {exc}")
    finally:
        torch.set_num_threads(prev)


def _pictures(rep: DigitsReport, srows: dict, students: dict, head: dict, t, ref, out: Path) -> None:
    """teacher_samples.png, samples.png (same latents and labels in every row) and fid_vs_iterations.png."""
    tx = {k: teacher_samples(t, 16, steps=k, solver="heun", seed=REPORT_SEED + 7, cache=False)[0] for k in TEACHER_STEPS}
    rows = [("data", ref.heldout[:16])] + [(f"teacher Heun {k} ({teacher_nfe(k, 'heun')} NFE)", tx[k]) for k in TEACHER_STEPS]
    rep.pictures["teacher_samples"] = str(labelled_rows(rows, out / "teacher_samples.png"))
    grid_rows = [("data", ref.heldout[:16]), ("teacher Heun 35 NFE", tx[18])]
    curves = {}
    for m, student in students.items():
        name = srows[m]["label"].split(",")[0]
        grid_rows.append((f"{name} ({student.info.steps} NFE)", student.sample(16, seed=REPORT_SEED + 7)))
        hist = read_jsonl(Path(srows[m]["run_dir"]) / "metrics.jsonl")
        curves[name] = [(0, x["fid_initial"]) for x in hist if "fid_initial" in x] + \
                       [(x["step"], x["fid_student"]) for x in hist if "fid_student" in x]
    rep.pictures["samples"] = str(labelled_rows(grid_rows, out / "samples.png"))
    e18 = next((x["fid"] for x in rep.teacher_rows if x["solver"] == "euler" and x["steps"] == 18), None)
    h = {"teacher Heun 35 NFE (mean)": head["fid"], "teacher Euler 18 NFE": e18, "data vs data": rep.baseline.get("fid")}
    rep.pictures["fid_vs_iterations"] = str(line_plot(
        curves, out / "fid_vs_iterations.png", title=f"digits: FID (n={rep.n}, digits features) vs distillation iterations",
        xlabel="distillation iterations", ylabel="FID", hlines=h))


def _verdict(student: dict, teacher: dict) -> str:
    """Student against teacher, both means over the same number of draws: the gap, and its
    standard error from the draws' spread (``meets_target``: mean at or below the teacher's)."""
    gap = student["fid"] - teacher["fid"]
    k = len(student["fid_draws"])
    se = None
    if student.get("fid_std") is not None and teacher.get("fid_std") is not None:
        se = math.sqrt(student["fid_std"] ** 2 / k + teacher["fid_std"] ** 2 / len(teacher["fid_draws"]))
    student["meets_target"] = gap <= 0
    text = (f"{student['label'].split(',')[0]}: FID {student['fid']:.3f} vs teacher at 35 NFE {teacher['fid']:.3f} "
            f"(means of {k} draws): " + ("at or below the teacher" if gap <= 0 else f"above the teacher by {gap:.3f}"))
    if se is not None:
        text += f"; gap {gap:+.3f} +- {se:.3f} (standard error)"
        if gap > 0 and gap < 2 * se:
            text += ", within draw noise"
    if student.get("stopped_early"):
        text += f" (stopped by the time budget at step {student['train_steps']})"
    return text


def format_report(rep: DigitsReport) -> str:
    lines = [f"digits report: n={rep.n} samples per FID against the reference half of the digits "
             f"(features of the shipped digits classifier); lower is better; +-std: spread over (k) sample draws, "
             f"FID then their mean",
             f"{'model':<28} {'NFE':>4} {'FID':>8} {'+-std':>11} {'KID':>8} {'prec':>6} {'recall':>6} {'ms/sample':>10}"]
    lines.append("-" * len(lines[1]))

    def row(name, nfe, r, ms):
        kid = r.get("kid_mean")
        spread = f"{r['fid_std']:.3f} ({len(r['fid_draws'])})" if r.get("fid_std") is not None else "-"
        return (f"{name:<28} {nfe:>4} {r['fid']:>8.3f} {spread:>11} {kid if kid is None else format(kid, '8.4f'):>8} "
                f"{r.get('precision', float('nan')):>6.3f} {r.get('recall', float('nan')):>6.3f} "
                + (f"{ms:>10.3f}" if ms is not None else f"{'-':>10}"))

    lines.append(row("data vs data (held-out)", "-", rep.baseline, None))
    for r in rep.teacher_rows:
        lines.append(row(r["label"], r["nfe"], r, r["ms_per_sample"]))
    for r in rep.student_rows:
        lines.append(row(r["label"], r["nfe"], r, r.get("ms_per_sample")))
    if rep.student_rows:
        lines.append("")
        for r in rep.student_rows:
            lines.append(f"{r['method']}: {r['train_steps']} iterations in {r['train_s']:.0f} s, FID {r.get('fid_initial') or float('nan'):.2f} "
                         f"(initial generator) -> {r['fid']:.3f}" + (" [stopped by the time budget]" if r.get("stopped_early") else ""))
    lines += report_footer(rep.verdicts, rep.pictures, rep.elapsed_s, rep.phases_s)
    return "\n".join(lines)
