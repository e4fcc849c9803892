"""The distillation engine: configuration, training loop, EMA, optimisers, checkpoints,
distributed helpers and logging. Entry points: :func:`run_distillation`, :class:`DistillConfig`."""
from .config import (ConfigError, DistillConfig, DistributedConfig, EMAConfig, MethodConfig, OptimConfig,
                     PRESETS, TeacherConfig, default_config, preset_config, valid_keys)
from .entry import distill_command, format_summary, load_config, sample_command
from .loop import DistillResult, Distiller, TrainingDiverged, run_distillation

__all__ = ["DistillConfig", "TeacherConfig", "MethodConfig", "OptimConfig", "EMAConfig", "DistributedConfig",
           "ConfigError", "PRESETS", "preset_config", "default_config", "valid_keys", "run_distillation",
           "Distiller", "DistillResult", "TrainingDiverged", "distill_command", "sample_command",
           "load_config", "format_summary"]
