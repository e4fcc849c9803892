"""What ``fastdistill distill --preset/--config`` calls: ``distill_command(config, overrides, preset) -> exit code``.

``config`` is a JSON/TOML file (it may name a ``preset``); with neither, the ``toy`` preset
(the CLI's default without either is the digits report, ``fastdistill.reports.digits``).
Errors the user caused (:data:`USER_ERRORS`: the configuration, with the list of valid keys for
an unknown one; a teacher that does not load; a missing path; a device that is not there) are
printed as one line and give exit code 2; ``debug=True`` or ``FASTDISTILL_DEBUG=1`` re-raises
them instead, traceback and all. A diverged run gives exit code 3.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..methods import ConfigError
from ..metrics import EvalError
from ..teachers import CheckpointError, UnsafeCheckpointError
from .config import DistillConfig, preset_config
from .distributed import is_main, shutdown
from .loop import Distiller, TrainingDiverged

#: what the user can get wrong: one line and exit code 2 from the CLI (ValueError: the checks of
#: configs, inputs and shapes; OSError: paths, files, full or read-only disks; the others:
#: checkpoints). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, UnsafeCheckpointError, EvalError, OSError, ValueError)

DEBUG_ENV = "FASTDISTILL_DEBUG"


def debug_enabled(flag: Optional[bool] = None) -> bool:
    """``flag`` (the CLI's ``--debug``), else ``$FASTDISTILL_DEBUG`` set to anything but 0/false/no/empty."""
    if flag:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_message(exc: BaseException) -> str:
    """The one line shown for ``exc``: its message (its type when it has none)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror and text.startswith("[Errno"):
        text = f"{exc.filename}: {exc.strerror}"  # an OS error straight from open() / mkdir()
    return " ".join(text.split()) if text else type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that did not fit (CUDA, or the CPU allocator's refusal)."""
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


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
    if result.final_s >= 0.5:
        lines.append(f"final outputs (student, pictures{', samples' if result.samples else ''}) in {result.final_s:.0f} s")
    if result.samples:
        lines.append(f"samples:    {result.samples}")
    if result.checkpoint:
        lines.append(f"checkpoint: {result.checkpoint}")
    return "\n".join(lines)


def distill_command(config: Optional[str] = None, overrides: Sequence[str] = (), preset: Optional[str] = None,
                    *, debug: Optional[bool] = None) -> int:
    """Run ``fastdistill distill --config/--preset``; returns the exit code (0 done, 2 bad input,
    3 diverged, 128 + the signal when a signal stopped it)."""
    try:
        result = Distiller(load_config(config, overrides, preset)).run()
    except TrainingDiverged as exc:
        if debug_enabled(debug):
            raise
        print(f"fastdistill distill: {error_message(exc)}", file=sys.stderr)
        return 3
    except USER_ERRORS as exc:
        if debug_enabled(debug):
            raise
        print(f"fastdistill distill: {error_message(exc)}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as exc:
        if debug_enabled(debug) or not out_of_memory(exc):
            raise
        asked = re.search(r"tried to allocate ([0-9.]+ ?[A-Za-z]*)", str(exc), re.IGNORECASE)
        print(f"fastdistill distill: out of memory{f' (an allocation of {asked.group(1)})' if asked else ''}: lower "
              f"batch_size (or optim.grad_accum > 1 keeps the batch in smaller pieces)", file=sys.stderr)
        return 2
    speaks = is_main()  # under torchrun rank 0 speaks for all
    shutdown()  # the Distiller is gone, so the process group can go before the exit
    if speaks:
        print(format_summary(result))
        if result.interrupted:
            print(f"interrupted; resume with the same command (resume=auto picks up {result.checkpoint})")
    if result.interrupted:
        return 128 + (result.stop_signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1
    return 0
