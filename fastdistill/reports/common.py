"""What the reports share: worker pools of one-thread processes, draws merged into one row,
a run's progress line, and the closing lines of a report."""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import torch

from ..engine.evaluator import read_jsonl


def _init_worker() -> None:
    torch.set_num_threads(1)


def pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes with one torch thread each (timings are one core each)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)


def merge_draws(rows: Sequence[dict], keys: Sequence[str] = ("fid",)) -> dict:
    """One row from the draws of one model: draw 0's entries, and for each of ``keys`` the mean
    over draws (``key``), each value (``key_draws``) and their sample standard deviation
    (``key_std``; None for one draw)."""
    first = next(r for r in rows if r.get("draw", 0) == 0)
    out = {k: v for k, v in first.items() if k != "draw"}
    ordered = sorted(rows, key=lambda r: r.get("draw", 0))
    for key in keys:
        vals = [r[key] for r in ordered]
        out.update({key: sum(vals) / len(vals), f"{key}_draws": vals,
                    f"{key}_std": float(torch.tensor(vals, dtype=torch.float64).std()) if len(vals) > 1 else None})
    return out


def run_progress(name: str, run_dir: Path) -> str:
    """``sid step 300 FID 0.21``: the latest step (and FID, where the run logs one) of a run."""
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    step = max((r.get("step", 0) for r in rows), default=0)
    fid = next((r["fid_student"] for r in reversed(rows) if "fid_student" in r), None)
    return f"{name} step {step}" + (f" FID {fid:.3f}" if fid is not None else "")


def report_footer(verdicts: Sequence[str], pictures: dict, elapsed_s: float, phases_s: dict) -> list:
    """A report's closing lines: its verdicts, its pictures, its wall time by phase."""
    lines = list(verdicts)
    if pictures:
        lines.append("pictures: " + ", ".join(pictures.values()))
    lines.append(f"total {elapsed_s:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases_s.items()) + ")")
    return lines
