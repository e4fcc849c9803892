"""The digits teacher shipped in the package: the name ``"digits"`` (unless a file of that name exists)."""
from __future__ import annotations

import os

from ..digits import load_digits_teacher
from .base import CheckpointFamily, register_checkpoint_family


@register_checkpoint_family
class ShippedDigits(CheckpointFamily):
    name = "the shipped digits teacher"
    format = "digits"

    def claims(self, spec):
        return spec == "digits" and not os.path.exists(spec)

    def load(self, spec, device):
        return load_digits_teacher(device=device)
