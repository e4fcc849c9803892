"""What ``fastdistill distill --preset/--config`` calls: ``distill_command(config, overrides, preset) -> exit code``.

``config`` is a JSON/TOML file (it may name a ``preset``); with neither, the ``toy`` preset
(the CLI's default without either is the digits report, ``fastdistill.reports.digits``).
Errors in the configuration are printed with the list of valid keys and give exit code 2.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..methods import ConfigError
from .config import DistillConfig, preset_config
from .loop import TrainingDiverged, run_distillation


def load_config(config: Optional[str] = None, overrides: Sequence[str] = (), preset: Optional[str] = None) -> DistillConfig:
    if config:
        cfg = DistillConfig.from_file(config)
        if preset:
            raise ConfigError("give either a config file or a preset, not both (a config file may set preset=...)")
    else:
        cfg = preset_config(preset or "toy")
    return cfg.with_overrides(list(overrides)).validate()


def format_summary(result) -> str:
    q = result.quality
    lines = [f"distilled {result.step} steps ({result.images_seen / 1000:.1f} kimg) in {result.elapsed_s:.0f} s"
             + (f", {result.nan_steps} non-finite steps skipped" if result.nan_steps else "")]
    if q is not None:
        if q.metric == "fid":
            lines.append("sample quality: FID in the digits classifier's features, same n for all (lower is better)")
            fmt, floor = "{:.3f}", "data vs data (held-out half, same n)"
        else:
            lines.append("sample quality: sliced Wasserstein-2 distance to the data (lower is better)")
            fmt, floor = "{:.4f}", "data vs data (sampling noise floor)"
        rows = [(floor, q.data_vs_data), ("teacher, Heun sampler, 35 evaluations", q.teacher_heun35),
                ("generator before distillation, 1 evaluation", q.initial), ("student (EMA), 1 evaluation", q.student)]
        for name, v in rows:
            if v is not None:
                lines.append(f"  {name:<46} " + fmt.format(v))
        curve = Path(result.out_dir) / f"{q.metric}_vs_iterations.png"
        if curve.is_file():
            lines.append(f"curve:      {curve}")
    if result.picture:
        lines.append(f"picture:    {result.picture}")
    if result.samples:
        lines.append(f"samples:    {result.samples}")
    if result.checkpoint:
        lines.append(f"checkpoint: {result.checkpoint}")
    return "\n".join(lines)


def distill_command(config: Optional[str] = None, overrides: Sequence[str] = (), preset: Optional[str] = None) -> int:
    try:
        cfg = load_config(config, overrides, preset)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"fastdistill distill: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_distillation(cfg)
    except TrainingDiverged as exc:
        print(f"fastdistill distill: {exc}", file=sys.stderr)
        return 3
    except (PermissionError, ConfigError) as exc:
        print(f"fastdistill distill: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    if result.interrupted:
        print(f"interrupted; resume with the same command (resume=auto picks up {result.checkpoint})")
        return 128 + (result.stop_signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1
    return 0
