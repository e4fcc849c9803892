"""SiD: score identity distillation (docs/algorithms.md section 2, official form)."""
import math
from dataclasses import dataclass

from ..losses import sid_loss
from ..losses.functional import DIVISORS
from .base import DistillMethod, FewStepConfig, check, check_choice, register_method

@dataclass
class SiDConfig(FewStepConfig):
    name: str = "sid"
    alpha: float = 1.2  # SiD alpha
    divisor: str = "mean_abs"  # per-sample stop-gradient divisor of the loss: mean_abs (official) | none
    reuse_samples: bool = False  # the fake step fits the generator step's samples instead of fresh ones (faster; not SiD's recipe, which draws fresh noise)

    def validate(self) -> None:
        super().validate()
        check_choice("method.divisor", self.divisor, DIVISORS)
        check(isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha), f"method.alpha must be finite, got {self.alpha!r}")


@register_method("sid", config=SiDConfig)
class SiD(DistillMethod):
    """``l_b = (1/w_b) sum_i delta_i (a_i - alpha delta_i)``; options ``alpha``, ``divisor`` (w_b)."""

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return sid_loss(y, y_real, y_fake, alpha=c.alpha, divisor=c.divisor,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
