"""The embedded default (``fastdistill distill`` with no preset): the shipped digits teacher
against one-step SiD, SIM and DMD students, in at most 10 minutes on 2 CPU cores.

    from fastdistill.engine.digits import digits_report, format_report
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
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..evaluation import DIGITS_N, line_plot, quality, read_jsonl, reference_data, teacher_nfe

METHOD_PRESETS = {"sid": "digits", "sim": "digits-sim", "dmd": "digits-dmd"}
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
def _init_worker(cache_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["FASTDISTILL_EVAL_CACHE"] = cache_dir


def _teacher_task(teacher_spec, solver: str, steps: int, n: int, draw: int) -> dict:
    """One teacher draw; draw 0 gets every metric and the timing, further draws FID only."""
    from ..evaluation import resolve_teacher, teacher_samples

    t = resolve_teacher(teacher_spec)
    ref = reference_data("digits")
    x, sec = teacher_samples(t, n, steps=steps, solver=solver, seed=REPORT_SEED + draw)
    return dict(model="teacher", solver=solver, steps=steps, nfe=teacher_nfe(steps, solver), draw=draw,
                label=f"teacher {solver.capitalize()} {steps} step{'s' if steps > 1 else ''}",
                ms_per_sample=1000 * sec, **quality(x, ref, full=draw == 0))


def _merge_draws(rows: Sequence[dict]) -> dict:
    """One row from the draws of one model: draw 0's metrics, ``fid`` the mean over draws,
    ``fid_std`` their sample standard deviation, ``fid_draws`` each value."""
    first = next(r for r in rows if r.get("draw", 0) == 0)
    fids = [r["fid"] for r in sorted(rows, key=lambda r: r.get("draw", 0))]
    out = {k: v for k, v in first.items() if k != "draw"}
    out.update(fid=sum(fids) / len(fids), fid_draws=fids,
               fid_std=float(torch.tensor(fids, dtype=torch.float64).std()) if len(fids) > 1 else None)
    return out


def _student_quality(sample_fn, n: int, draws: int, ref) -> dict:
    return _merge_draws([dict(draw=k, **quality(sample_fn(n, REPORT_SEED + k), ref, full=k == 0)) for k in range(draws)])


def _progress(method: str, run_dir: Path) -> str:
    """``sid step 300 FID 0.21``: the latest step and FID a run has logged (its JSONL file)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    step = max((r.get("step", 0) for r in rows), default=0)
    fid = next((r["fid_student"] for r in reversed(rows) if "fid_student" in r), None)
    return f"{method} step {step}" + (f" FID {fid:.3f}" if fid is not None else "")


def _student_task(method: str, run_dir: str, teacher_spec, n: int, draws: int, deadline: float,
                  overrides: Sequence[str]) -> dict:
    from .config import preset_config
    from .loop import Distiller

    cfg = preset_config(METHOD_PRESETS[method])
    cfg.out_dir = run_dir
    cfg.resume = "none"
    cfg.eval_samples = n  # the same n as the table (and the teacher's 35-NFE samples come from the cache)
    if teacher_spec != "digits":
        if isinstance(teacher_spec, (str, os.PathLike)):
            cfg.teacher.path = os.fspath(teacher_spec)
    cfg = cfg.with_overrides(list(overrides)).validate()
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
    ev = d._image_evaluator()
    row = dict(model="student", method=method, steps=1, nfe=1, label=f"{method.upper() if method != 'sid' else 'SiD'} student, 1 step",
               train_steps=res.step, train_s=train_s, stopped_early=stopped["early"], run_dir=run_dir,
               **_student_quality(lambda k, seed: d.student_samples(k, seed=seed), n, draws, ev.ref))  # EMA, one step
    row["fid_initial"] = (getattr(d, "initial_metrics", {}) or {}).get("fid_initial")
    return row


# ----------------------------------------------------------------------------- pictures
def _upscale_grid(rows: Sequence[tuple[str, torch.Tensor]], path, scale: int = 4, label_w: int = 150) -> Path:
    """Labelled rows of images (each row a (k, 1, H, W) tensor in [-1, 1]), nearest-upscaled."""
    from PIL import Image, ImageDraw, ImageFont

    k = max(r[1].shape[0] for r in rows)
    h, w = rows[0][1].shape[-2:]
    cell_h, cell_w = h * scale + 2, w * scale + 2
    im = Image.new("L", (label_w + k * cell_w, len(rows) * cell_h + 4), 255)
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=13)  # at the default size 10 a space is 2 px wide: labels run together
    for i, (name, x) in enumerate(rows):
        img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
        for j in range(img.shape[0]):
            tile = Image.fromarray(img[j]).resize((w * scale, h * scale), Image.NEAREST)
            im.paste(tile, (label_w + j * cell_w, 2 + i * cell_h))
        d.text((4, 2 + i * cell_h + cell_h // 2 - 7), name[:24], fill=0, font=font)
    path = Path(path)
    im.save(path)
    return path


# ----------------------------------------------------------------------------- the report
def _pool(workers: int, cache_dir: str) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(cache_dir,))


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
    from .config import preset_config

    for m in methods:  # a bad override fails now, not after the teacher table
        preset_config(METHOD_PRESETS[m]).with_overrides(list(overrides)).validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    ref = reference_data("digits")
    n = int(min(n, ref.max_n()))
    base = quality(ref.baseline_set(n), ref)
    rep = DigitsReport(out_dir=str(out), n=n, baseline=base)
    prev_cache = os.environ.get("FASTDISTILL_EVAL_CACHE")
    os.environ["FASTDISTILL_EVAL_CACHE"] = str(cache)
    try:
        # 1. the teacher table: the 35-NFE run first (the students' baseline reads it from the cache)
        t1 = time.time()
        settings = {(s, k) for s in solvers for k in teacher_steps} | {HEADLINE}
        jobs = sorted([(s, k, 0) for s, k in settings] + [(*HEADLINE, d) for d in range(1, draws)],
                      key=lambda j: (j[2], -teacher_nfe(j[1], j[0])))
        log(f"[digits report] teacher: {len(settings)} sampler settings ({draws} draws at 35 NFE), n={n} each ...")
        with _pool(max(1, min(workers, 2)), str(cache)) as pool:
            rows = [f.result() for f in [pool.submit(_teacher_task, teacher, s, k, n, d) for s, k, d in jobs]]
        merged = [_merge_draws([r for r in rows if (r["solver"], r["steps"]) == sk]) for sk in settings]
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
        with _pool(max(1, min(workers, len(methods))), str(cache)) as pool:
            futs = {m: pool.submit(_student_task, m, str(out / m), teacher, n, draws, deadline, tuple(overrides))
                    for m in methods}
            pending = set(futs.values())
            while pending:
                pending = wait(pending, timeout=progress_every).not_done
                if pending:
                    log(f"  {time.time() - t2:4.0f} s  " + "   ".join(_progress(m, out / m) for m in methods))
            srows = {m: f.result() for m, f in futs.items()}
        rep.phases_s["students"] = time.time() - t2
        # 3. time per sample of each student alone (one thread), pictures
        t3 = time.time()
        _finish(rep, srows, methods, teacher, ref, out)
        rep.phases_s["timing_and_pictures"] = time.time() - t3
    finally:
        if prev_cache is None:
            os.environ.pop("FASTDISTILL_EVAL_CACHE", None)
        else:
            os.environ["FASTDISTILL_EVAL_CACHE"] = prev_cache
    rep.elapsed_s = time.time() - t_start
    (out / "report.json").write_text(json.dumps(rep.to_dict(), indent=2))
    (out / "report.txt").write_text(format_report(rep) + "\n")
    return rep


def _finish(rep: DigitsReport, srows: dict, methods, teacher, ref, out: Path) -> None:
    from ..evaluation import load_student_generator, resolve_teacher, student_samples, teacher_samples

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = resolve_teacher(teacher)
        tx = {}
        for k in TEACHER_STEPS:
            tx[k], _ = teacher_samples(t, 16, steps=k, solver="heun", seed=REPORT_SEED + 7, cache=False)
        rows = [("data", ref.heldout[:16])] + [(f"teacher Heun {k} ({teacher_nfe(k, 'heun')} NFE)", tx[k]) for k in TEACHER_STEPS]
        rep.pictures["teacher_samples"] = str(_upscale_grid(rows, out / "teacher_samples.png"))
        grid_rows = [("data", ref.heldout[:16]), ("teacher Heun 35 NFE", tx[18])]
        curves, h = {}, {}
        for m in methods:
            r = srows[m]
            net, info = load_student_generator(r["run_dir"])
            _, sec = student_samples(net, info, 256, seed=REPORT_SEED)
            r["ms_per_sample"] = 1000 * sec
            xs, _ = student_samples(net, info, 16, seed=REPORT_SEED + 7)
            grid_rows.append((f"{r['label'].split(',')[0]} (1 NFE)", xs))
            hist = read_jsonl(Path(r["run_dir"]) / "metrics.jsonl")
            pts = [(0, x["fid_initial"]) for x in hist if "fid_initial" in x] + \
                  [(x["step"], x["fid_student"]) for x in hist if "fid_student" in x]
            curves[r["label"].split(",")[0]] = pts
            rep.student_rows.append(r)
        rep.pictures["samples"] = str(_upscale_grid(grid_rows, out / "samples.png"))
        head = next(x for x in rep.teacher_rows if (x["solver"], x["steps"]) == HEADLINE)
        t35 = head["fid"]
        e18 = next((x["fid"] for x in rep.teacher_rows if x["solver"] == "euler" and x["steps"] == 18), None)
        h = {"teacher Heun 35 NFE (mean)": t35, "teacher Euler 18 NFE": e18, "data vs data": rep.baseline.get("fid")}
        rep.pictures["fid_vs_iterations"] = str(line_plot(
            curves, out / "fid_vs_iterations.png", title=f"digits: FID (n={rep.n}, digits features) vs distillation iterations",
            xlabel="distillation iterations", ylabel="FID", hlines=h))
        for r in rep.student_rows:
            rep.verdicts.append(_verdict(r, head))
    finally:
        torch.set_num_threads(prev)


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
        lines.append(row(r["label"], 1, r, r.get("ms_per_sample")))
    if rep.student_rows:
        lines.append("")
        for r in rep.student_rows:
            lines.append(f"{r['method']}: {r['train_steps']} iterations in {r['train_s']:.0f} s, FID {r.get('fid_initial') or float('nan'):.2f} "
                         f"(initial generator) -> {r['fid']:.3f}" + (" [stopped by the time budget]" if r.get("stopped_early") else ""))
    lines += rep.verdicts
    if rep.pictures:
        lines.append("pictures: " + ", ".join(rep.pictures.values()))
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in rep.phases_s.items())
    lines.append(f"total {rep.elapsed_s:.0f} s ({phases})")
    return "\n".join(lines)


def report_command(overrides: Sequence[str] = (), teacher: Optional[str] = None, methods: str = "sid,sim,dmd",
                   budget: float = 570.0, workers: int = 3, draws: int = 3) -> int:
    """``fastdistill distill`` with no preset or config file: the digits report.

    ``out_dir=DIR`` among the overrides is the report's directory (default ``runs/digits``);
    the other overrides apply to every student run. Returns the exit code.
    """
    import sys

    from ..evaluation import EvalError
    from .config import ConfigError

    out, rest = DEFAULT_OUT, []
    for o in overrides:
        if o.split("=", 1)[0].strip() == "out_dir":
            out = o.split("=", 1)[1]
        else:
            rest.append(o)
    try:
        rep = digits_report(out, budget, methods=[m for m in methods.split(",") if m], teacher=teacher or "digits",
                            workers=workers, draws=draws, overrides=rest)
    except (ConfigError, EvalError, FileNotFoundError, ValueError) as exc:
        print(f"fastdistill distill: {exc}", file=sys.stderr)
        return 2
    print(format_report(rep))
    return 0
