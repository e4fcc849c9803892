"""What one family of teachers knows, and the registries that find it.

Two kinds of family. A :class:`PipelineFamily` is a diffusers text-to-image pipeline class; the
rest are :class:`CheckpointFamily`: a built-in name (the shipped digits teacher, the analytic
mixtures) or one format of a checkpoint file or folder (EDM pickles, fastdistill's safetensors,
a diffusers ``UNet2DModel`` folder), found by what ``sniff_format`` says the path is.

A family is registered under the pipeline class that a folder's ``model_index.json`` names
(``_class_name``). It says which components the folder must hold, which one is the denoising
network, whether the network is a flow-matching velocity or a discrete-VP prediction, how the
pipeline encodes prompts into a :class:`~fastdistill.conditioning.Conditioning`, and how that
conditioning becomes the network's keyword inputs. The conversion to an x0-prediction and the
checks shared by every family live in :mod:`..pipelines`; nothing there branches on a family.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch

from ...conditioning import Conditioning

__all__ = ["PipelineFamily", "register", "family_for", "registered", "call_default", "CheckpointFamily",
           "register_checkpoint_family", "checkpoint_family", "named_family", "checkpoint_families"]

#: pipeline class name -> its family, in registration order
_REGISTRY: dict[str, "PipelineFamily"] = {}
#: format or built-in name -> its checkpoint family, in registration order
_CHECKPOINT_REGISTRY: dict[str, "CheckpointFamily"] = {}


def call_default(pipe, name: str):
    """A default of the pipeline's own ``__call__`` (what a user of the pipeline gets)."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


class PipelineFamily:
    """One pipeline class's teacher. Subclasses set the class attributes and implement
    :meth:`cond_dim`, :meth:`encode` and, for discrete-VP families, :meth:`network_inputs`; flow
    families (``flow = True``) implement :meth:`velocity` instead."""

    #: display name (messages, the prompt cache key, ``teacher.family``)
    name: str = ""
    #: the pipeline class (``model_index.json`` ``_class_name``; an attribute of ``diffusers``)
    pipeline: str = ""
    #: the component holding the denoising network (the teacher's ``unet`` attribute either way)
    network: str = "unet"
    #: the other components the folder must hold
    components: tuple[str, ...] = ("vae", "text_encoder", "tokenizer", "scheduler")
    #: flow matching (velocity) rather than a discrete VP schedule (epsilon / v / sample)
    flow: bool = False
    #: the attribute of the pipeline holding its T5 tokenizer (its limit is the call's max_sequence_length)
    t5_tokenizer: Optional[str] = None
    #: latent patches packed into one token (Flux: 2 x 2); the latent side must be a multiple
    patch: int = 1
    #: keyword arguments of the pipeline's call that an export's snippet passes besides the
    #: student's inputs (what keeps the call from changing them, e.g. PixArt's resolution binning)
    one_step_call: dict = {}
    #: the preset ``distill --teacher FOLDER --prompts FILE`` starts from without --preset / --config
    #: (None: the SD 1.x recipe, which warns that it was made for another family)
    preset: Optional[str] = None

    def __deepcopy__(self, memo):  # stateless: every copy of a teacher shares its family
        return self

    @property
    def required(self) -> tuple[str, ...]:
        return (self.network,) + self.components

    def load_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments of this pipeline class."""
        return {}

    def cond_dim(self, network: torch.nn.Module) -> int:
        """The width of the text embeddings the network reads."""
        raise NotImplementedError

    def encode(self, teacher, pipe, prompts: list, device) -> Conditioning:
        """``prompts`` through the pipeline's own ``encode_prompt`` (float32, on the CPU)."""
        raise NotImplementedError

    def network_inputs(self, teacher, cond: Conditioning, batch: int, device, dtype) -> dict:
        """The keyword inputs of a discrete-VP network besides ``(x, timestep)``."""
        raise NotImplementedError

    def velocity(self, teacher, x_t: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """A flow network's velocity at ``x_t`` (B, C, h, w) and the network's own timestep."""
        raise NotImplementedError

    # -- flow families -----------------------------------------------------------------------
    def default_resolution(self, pipe, vae_scale_factor: int) -> int:
        """The image side (pixels) when the user gives none."""
        raise NotImplementedError

    def timestep_scale(self, num_train_timesteps: int) -> float:
        """What the network's timestep input is in units of the flow time t in [0, 1]."""
        return float(num_train_timesteps)

    def latent_channels(self, network: torch.nn.Module) -> int:
        return int(network.config.in_channels) // (self.patch * self.patch)

    def embedded_guidance(self, pipe) -> Optional[float]:
        """The default of a guidance input of the network itself (FLUX.1-dev); None: it has none."""
        return None


def _register(registry: dict, key: str, cls: type):
    """Put one instance of ``cls`` in ``registry`` under its attribute ``key`` (unique, non-empty)."""
    if not getattr(cls, key) or not cls.name:
        raise TypeError(f"{cls.__name__} needs a {key} and a name")
    if getattr(cls, key) in registry:
        raise ValueError(f"{getattr(cls, key)} already has a family ({type(registry[getattr(cls, key)]).__name__})")
    registry[getattr(cls, key)] = cls()
    return cls


def register(cls: type[PipelineFamily]) -> type[PipelineFamily]:
    """Class decorator: make ``cls`` the family of its ``pipeline``."""
    return _register(_REGISTRY, "pipeline", cls)


def family_for(pipeline: str) -> Optional[PipelineFamily]:
    """The family registered for a pipeline class name, or None."""
    return _REGISTRY.get(pipeline)


def registered() -> dict[str, PipelineFamily]:
    """Every registered family by pipeline class name, in registration order."""
    return dict(_REGISTRY)


class CheckpointFamily:
    """Teachers that are not diffusers pipelines. Subclasses set ``name`` and ``format`` and
    implement :meth:`load`; a family of a built-in name also implements :meth:`claims`."""

    #: display name (messages, the listing)
    name: str = ""
    #: the key: the format ``sniff_format`` reports for such a path, or the built-in name itself
    format: str = ""

    def claims(self, spec: str) -> bool:
        """Whether ``spec`` is this family's built-in name (asked before ``spec`` is read as a path)."""
        return False

    def load(self, spec: str, device) -> torch.nn.Module:
        """The frozen teacher (eval mode, ``requires_grad=False``) that ``spec`` names, on ``device``."""
        raise NotImplementedError


def register_checkpoint_family(cls: type[CheckpointFamily]) -> type[CheckpointFamily]:
    """Class decorator: make ``cls`` the family of its ``format``."""
    return _register(_CHECKPOINT_REGISTRY, "format", cls)


def named_family(spec: str) -> Optional[CheckpointFamily]:
    """The family whose built-in name ``spec`` is, or None."""
    return next((f for f in _CHECKPOINT_REGISTRY.values() if f.claims(spec)), None)


def checkpoint_family(fmt: str) -> Optional[CheckpointFamily]:
    """The family registered for a format, or None."""
    return _CHECKPOINT_REGISTRY.get(fmt)


def checkpoint_families() -> dict[str, CheckpointFamily]:
    """Every registered checkpoint family by format, in registration order."""
    return dict(_CHECKPOINT_REGISTRY)
