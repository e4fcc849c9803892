"""Exact Gaussian-mixture teachers: ``"analytic:NAME"`` (``8gaussians``, ``25gaussians``, ``ringN``, ``gaussian``)."""
from __future__ import annotations

from ..analytic import analytic_teacher
from .base import CheckpointFamily, register_checkpoint_family

#: what an analytic teacher's name starts with
ANALYTIC_PREFIX = "analytic:"


@register_checkpoint_family
class Analytic(CheckpointFamily):
    name = "analytic Gaussian mixture"
    format = ANALYTIC_PREFIX

    def claims(self, spec):
        return spec.startswith(ANALYTIC_PREFIX)

    def load(self, spec, device):
        return analytic_teacher(spec[len(ANALYTIC_PREFIX):]).to(device).eval().requires_grad_(False)
