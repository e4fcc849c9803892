"""One conditioning type that every layer passes through unchanged.

A denoiser is called as ``D(x, sigma, cond)``. ``cond`` is ``None`` (unconditional) or a
:class:`Conditioning`: class labels today; token embeddings, a pooled embedding, an attention
mask and further per-sample model inputs for text-conditioned teachers. The trainer, the
samplers and the student only slice, concatenate and move it; only the network at the end
reads its fields. It also knows its unconditional counterpart, which classifier-free guidance
needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

import torch

__all__ = ["Conditioning", "ConditioningBank", "as_conditioning", "labels_of"]

_TENSOR_FIELDS = ("labels", "embeds", "pooled", "mask")


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Per-sample conditioning inputs, all batch-first with the same batch size.

    labels: (B, label_dim) one-hot (or soft) class labels.
    embeds: (B, L, D) token embeddings of a text encoder.
    pooled: (B, D') pooled text embedding.
    mask:   (B, L) attention mask of ``embeds``.
    extra:  further named per-sample inputs a network needs (e.g. SDXL's time ids).
    null:   the one-sample unconditional input (e.g. the empty prompt's embedding), when it is
            not simply zeros; :meth:`unconditional` repeats it to the batch size.
    """

    labels: Optional[torch.Tensor] = None
    embeds: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)
    null: Optional["Conditioning"] = None

    def __post_init__(self):
        sizes = {name: t.shape[0] for name, t in self.tensors().items()}
        if not sizes:
            raise ValueError("a Conditioning needs at least one tensor (use cond=None for unconditional)")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"conditioning tensors disagree on the batch size: {sizes}")
        if self.null is not None and self.null.batch_size != 1:
            raise ValueError(f"Conditioning.null must hold one sample, got {self.null.batch_size}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_labels(cls, labels, num_classes: int, n: Optional[int] = None) -> "Conditioning":
        """Class labels from an int, a sequence or tensor of class indices, or (B, num_classes) one-hot.

        ``n``: the batch size: an int is repeated to it, a sequence must have that length.
        """
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError("this model is unconditional: it takes no class labels")
        t = torch.as_tensor(labels)
        if t.ndim == 2:
            if t.shape[1] != num_classes or (n is not None and t.shape[0] != int(n)):
                want = f"({n}, {num_classes})" if n is not None else f"(B, {num_classes})"
                raise ValueError(f"one-hot labels must have shape {want}, got {tuple(t.shape)}")
            return cls(labels=t.float())
        if t.is_floating_point():
            raise ValueError(f"class indices must be integers, got {t.tolist()}")
        idx = t.long().reshape(-1)
        if n is not None and t.ndim == 0:  # one class for every sample
            idx = idx.expand(int(n))
        if n is not None and idx.numel() != int(n):
            raise ValueError(f"need one class index (an int) or {n}, got {idx.numel()}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
            raise ValueError(f"class indices must be in [0, {num_classes}), got {idx.tolist()}")
        return cls(labels=torch.nn.functional.one_hot(idx, num_classes).float())

    # ------------------------------------------------------------------ what it holds
    def tensors(self) -> dict:
        """Every per-sample tensor, by name (``extra`` entries as ``extra.<name>``)."""
        out = {name: getattr(self, name) for name in _TENSOR_FIELDS if getattr(self, name) is not None}
        out.update({f"extra.{k}": v for k, v in self.extra.items()})
        return out

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors().values())).shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors().values())).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype of the first float tensor (float32 when none is)."""
        return next((t.dtype for t in self.tensors().values() if t.is_floating_point()), torch.float32)

    # ------------------------------------------------------------------ batch operations
    def _map(self, fn) -> "Conditioning":
        kw = {name: fn(getattr(self, name)) for name in _TENSOR_FIELDS if getattr(self, name) is not None}
        return replace(self, **kw, extra={k: fn(v) for k, v in self.extra.items()})

    def __getitem__(self, index) -> "Conditioning":
        """The samples ``index`` selects (a slice, an index tensor or a boolean mask) along the batch."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index.to(t.device) if torch.is_tensor(index) else index])

    def repeat(self, k: int) -> "Conditioning":
        """The batch tiled ``k`` times: ``[c_0..c_B-1, c_0..c_B-1, ...]``."""
        return self._map(lambda t: t.repeat(int(k), *([1] * (t.ndim - 1))))

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Conditioning":
        """Moved to ``device``; floating-point tensors cast to ``dtype`` (masks and ids keep theirs)."""
        moved = self._map(lambda t: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None))
        return moved if self.null is None else replace(moved, null=self.null.to(device, dtype))

    @staticmethod
    def cat(conds: Sequence[Optional["Conditioning"]]) -> Optional["Conditioning"]:
        """Concatenation along the batch; all ``None`` gives ``None``."""
        conds = list(conds)
        if all(c is None for c in conds):
            return None
        if any(c is None for c in conds):
            raise ValueError("cannot concatenate conditioned and unconditioned batches")
        first = conds[0]
        layout = {name: t.shape[1:] for name, t in first.tensors().items()}
        for c in conds[1:]:
            if {name: t.shape[1:] for name, t in c.tensors().items()} != layout:
                raise ValueError("cannot concatenate conditionings of different kinds or shapes")
        kw = {name: torch.cat([getattr(c, name) for c in conds]) for name in _TENSOR_FIELDS
              if getattr(first, name) is not None}
        extra = {k: torch.cat([c.extra[k] for c in conds]) for k in first.extra}
        return replace(first, **kw, extra=extra)

    def unconditional(self) -> "Conditioning":
        """The unconditional input of the same batch size: ``null`` repeated, else zeros
        (zero class labels are what EDM's class-conditional networks see under label dropout)."""
        if self.null is not None:
            return replace(self.null.repeat(self.batch_size), null=self.null)
        return self._map(torch.zeros_like)

    def unconditional_where(self, mask: torch.Tensor) -> "Conditioning":
        """The samples where the (B,) boolean ``mask`` is set replaced by the unconditional input."""
        u = self.unconditional()
        m = mask.reshape(-1).to(torch.bool)
        if m.numel() != self.batch_size:
            raise ValueError(f"mask for {m.numel()} samples, the conditioning has {self.batch_size}")

        def pick(name, t):
            other = u.extra[name[6:]] if name.startswith("extra.") else getattr(u, name)
            return torch.where(m.to(t.device).reshape(-1, *([1] * (t.ndim - 1))), other.to(t.device, t.dtype), t)

        kw = {name: pick(name, getattr(self, name)) for name in _TENSOR_FIELDS if getattr(self, name) is not None}
        return replace(self, **kw, extra={k: pick(f"extra.{k}", v) for k, v in self.extra.items()})

    def to_tensors(self) -> dict:
        """Every tensor by name (``null.<name>`` for the unconditional input), for safetensors."""
        out = dict(self.tensors())
        if self.null is not None:
            out.update({f"null.{k}": v for k, v in self.null.tensors().items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> "Conditioning":
        """The inverse of :meth:`to_tensors`."""
        def fields_of(own: dict) -> dict:
            extra = {k[6:]: v for k, v in own.items() if k.startswith("extra.")}
            unknown = set(own) - set(_TENSOR_FIELDS) - {f"extra.{k}" for k in extra}
            if unknown:
                raise ValueError(f"not conditioning tensors: {sorted(unknown)}")
            return {**{k: own[k] for k in _TENSOR_FIELDS if k in own}, "extra": extra}

        null = {k[5:]: v for k, v in tensors.items() if k.startswith("null.")}
        main = {k: v for k, v in tensors.items() if not k.startswith("null.")}
        return cls(**fields_of(main), null=cls(**fields_of(null)) if null else None)

    @property
    def kind(self) -> str:
        """``"labels"``, ``"text"`` (token embeddings) or ``"other"``: what a checkpoint records."""
        if self.embeds is not None:
            return "text"
        return "labels" if self.labels is not None else "other"

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={tuple(t.shape)}" for name, t in self.tensors().items())
        return f"Conditioning({parts})"


class ConditioningBank:
    """A training set of conditionings (e.g. every prompt's text embedding, encoded once) that
    batches are drawn from uniformly, with replacement, by the run's noise generator (so a
    resumed run draws the same prompts)."""

    def __init__(self, cond: Conditioning):
        self.cond = cond

    def __len__(self) -> int:
        return self.cond.batch_size

    def draw(self, n: int, gen: torch.Generator, device) -> Conditioning:
        idx = torch.randint(0, len(self), (int(n),), generator=gen, device=gen.device)
        return self.cond[idx.cpu()].to(device)


def as_conditioning(cond) -> Optional[Conditioning]:
    """``None``, a :class:`Conditioning`, or a bare (B, label_dim) label tensor (the older call style)."""
    if cond is None or isinstance(cond, Conditioning):
        return cond
    if torch.is_tensor(cond):
        return Conditioning(labels=cond)
    raise TypeError(f"cond must be a Conditioning, a (B, label_dim) label tensor or None, got {type(cond).__name__}")


def labels_of(cond=None, class_labels: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The class-label tensor a label-conditioned network reads from ``cond`` (or the
    ``class_labels=`` keyword that existing callers use); ``None`` when there is none."""
    if class_labels is not None:
        if cond is not None:
            raise TypeError("give cond or class_labels, not both")
        return class_labels
    if cond is None or torch.is_tensor(cond):
        return cond
    if isinstance(cond, Conditioning):
        if cond.kind == "text":
            raise ValueError("this network is class-conditional; it cannot read text conditioning")
        return cond.labels
    raise TypeError(f"cond must be a Conditioning, a label tensor or None, got {type(cond).__name__}")

