"""SiD: score identity distillation (docs/algorithms.md section 2, official form)."""
import math
from dataclasses import dataclass

from ..losses import sid_loss
from .base import DistillMethod, MethodConfig, check, check_choice, register_method

SID_WEIGHTS = ("mean_abs", "none")


@dataclass
class SiDConfig(MethodConfig):
    name: str = "sid"
    alpha: float = 1.2  # SiD alpha
    weight: str = "mean_abs"  # per-sample weight: mean_abs | none

    def validate(self) -> None:
        super().validate()
        check_choice("method.weight", self.weight, SID_WEIGHTS)
        check(isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha), f"method.alpha must be finite, got {self.alpha!r}")


@register_method("sid", config=SiDConfig)
class SiD(DistillMethod):
    """``l_b = (1/w_b) sum_i delta_i (a_i - alpha delta_i)``; options ``alpha``, ``weight``."""

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return sid_loss(y, y_real, y_fake, alpha=c.alpha, weight=c.weight,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
