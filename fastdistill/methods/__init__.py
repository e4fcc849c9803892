"""Distillation methods: what one generator step and one fake-score step compute.

A new method is one small module: subclass :class:`DistillMethod`, implement ``loss``, decorate
with ``@register_method("name")`` and import it here.
"""
from .base import (DistillMethod, FakeNoise, GeneratorNoise, MethodContext, available_methods, get_method,
                   karras_sigma, register_method)
from . import dmd, ign, sid, sign, sim  # noqa: F401  (registration)
from .dmd import DMD
from .ign import IGN
from .sid import SiD
from .sign import SIGN
from .sim import SIM

__all__ = ["DistillMethod", "GeneratorNoise", "FakeNoise", "register_method", "get_method",
           "available_methods", "karras_sigma", "MethodContext", "SiD", "SIM", "DMD", "SIGN", "IGN"]
