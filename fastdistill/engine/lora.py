"""LoRA adapters (peft) on the trained networks: only the adapters train, the base weights stay
the teacher's, and the adapters start at zero (peft's default), so training starts from the teacher.

``add_lora(net, cfg)`` injects adapters of rank ``cfg.rank`` into every submodule whose name ends
with one of ``cfg.targets`` and marks only them trainable; :func:`trainable_parameters` is what
the optimisers, the EMA and the gradient clean-up see. A checkpoint's generator is rebuilt the
same way (``fastdistill.student``), so its state dict loads as written.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..methods import ConfigError

LORA_MARK = "lora_"  # peft's parameter names: ...lora_A.default.weight, ...lora_B.default.weight


def lora_targets(cfg) -> list[str]:
    return [t.strip() for t in cfg.targets.split(",") if t.strip()]


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(net: torch.nn.Module, cfg) -> torch.nn.Module:
    """Inject LoRA adapters into ``net`` (in place) per ``cfg`` (a ``LoRAConfig``) and freeze the rest."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ConfigError("lora.rank > 0 needs peft: pip install peft") from exc
    targets = lora_targets(cfg)
    hits = {n: m for n, m in net.named_modules() if _matches(n, targets)}
    if not hits:
        layers = sorted({n.rsplit(".", 1)[-1] for n, m in net.named_modules()
                         if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))})
        raise ConfigError(f"lora.targets={cfg.targets!r} matches no module of the network; its linear / conv "
                          f"layers end with: {', '.join(layers[:30])}")
    for name, m in hits.items():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            raise ConfigError(f"lora.targets: {name} is a {type(m).__name__}; LoRA takes Linear or Conv2d layers")
        dims = (m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else (m.in_channels, m.out_channels)
        if cfg.rank > min(dims):
            raise ConfigError(f"lora.rank={cfg.rank} does not fit {name} ({dims[0]} -> {dims[1]}): a rank above "
                              f"{min(dims)} adds nothing there; lower lora.rank or choose other lora.targets")
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, lora_dropout=cfg.dropout,
                        target_modules=sorted(hits))
    inject_adapter_in_model(config, net)
    for name, p in net.named_parameters():
        p.requires_grad_(LORA_MARK in name)
    return net


def has_lora(net: torch.nn.Module) -> bool:
    return any(LORA_MARK in name for name, _ in net.named_parameters())


def trainable_parameters(net: torch.nn.Module) -> list:
    """The adapters of a LoRA network, else every parameter."""
    if has_lora(net):
        return [p for name, p in net.named_parameters() if LORA_MARK in name]
    return list(net.parameters())


def set_trainable(net: torch.nn.Module, params: Optional[list]) -> None:
    """Gradients on for ``params`` only (None: nothing of ``net`` trains)."""
    net.requires_grad_(False)
    for p in params or ():
        p.requires_grad_(True)
