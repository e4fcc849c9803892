"""What one family of diffusers pipeline teachers knows, and the registry that finds it.

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

__all__ = ["PipelineFamily", "register", "family_for", "registered", "call_default"]

#: pipeline class name -> its family, in registration order
_REGISTRY: dict[str, "PipelineFamily"] = {}


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
    #: keyword arguments of the pipeline's call that an export's one-step snippet passes besides the
    #: student's inputs (what keeps the call from changing them, e.g. PixArt's resolution binning)
    one_step_call: dict = {}

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


def register(cls: type[PipelineFamily]) -> type[PipelineFamily]:
    """Class decorator: make ``cls`` the family of its ``pipeline``."""
    if not cls.pipeline or not cls.name:
        raise TypeError(f"{cls.__name__} needs a pipeline and a name")
    if cls.pipeline in _REGISTRY:
        raise ValueError(f"{cls.pipeline} already has a family ({type(_REGISTRY[cls.pipeline]).__name__})")
    _REGISTRY[cls.pipeline] = cls()
    return cls


def family_for(pipeline: str) -> Optional[PipelineFamily]:
    """The family registered for a pipeline class name, or None."""
    return _REGISTRY.get(pipeline)


def registered() -> dict[str, PipelineFamily]:
    """Every registered family by pipeline class name, in registration order."""
    return dict(_REGISTRY)
