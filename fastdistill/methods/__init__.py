"""Distillation methods: what one generator step and one fake-score step compute.

A new method is one small module: a config dataclass deriving from :class:`MethodConfig`, a
subclass of :class:`DistillMethod` implementing ``loss``, ``@register_method("name", config=...)``,
and an import here.
"""
from .base import (ConfigError, DistillMethod, FakeNoise, GeneratorNoise, MethodConfig, MethodContext,
                   available_methods, get_method, method_class, method_config, noise_levels, register_method)
from .levels import EDMLevels, NoiseLevels, TeacherLevels, karras_sigma
from .dmd import DMD, DMDConfig
from .ign import IGN, IGNConfig
from .sid import SiD, SiDConfig
from .sign import SIGN, SIGNConfig
from .sim import SIM, SIMConfig

__all__ = ["DistillMethod", "GeneratorNoise", "FakeNoise", "MethodConfig", "MethodContext", "ConfigError",
           "register_method", "get_method", "method_class", "method_config", "available_methods", "karras_sigma",
           "noise_levels", "NoiseLevels", "EDMLevels", "TeacherLevels",
           "SiD", "SiDConfig", "SIM", "SIMConfig", "DMD", "DMDConfig", "SIGN", "SIGNConfig", "IGN", "IGNConfig"]
