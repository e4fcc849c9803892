"""The distillation engine: configuration, training loop, EMA, optimisers, checkpoints,
distributed helpers, evaluation during training and logging. Entry points: :func:`run_distillation`,
:class:`DistillConfig`."""
from ..methods import ConfigError, MethodConfig, method_config
from . import presets  # noqa: F401  (registers the named presets)
from .config import (PRESETS, DistillConfig, DistributedConfig, EMAConfig, LogConfig, OptimConfig, TeacherConfig,
                     default_config, preset_config, valid_keys)
from .entry import distill_command, format_summary, load_config
from .evaluator import Quality
from .loop import DistillResult, Distiller, TrainingDiverged, run_distillation

__all__ = ["DistillConfig", "TeacherConfig", "MethodConfig", "method_config", "OptimConfig", "EMAConfig",
           "DistributedConfig", "LogConfig", "ConfigError", "PRESETS", "preset_config", "default_config", "valid_keys",
           "run_distillation", "Distiller", "DistillResult", "Quality", "TrainingDiverged", "distill_command",
           "load_config", "format_summary"]
