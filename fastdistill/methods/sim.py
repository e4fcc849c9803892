"""SIM: score implicit matching with the pseudo-Huber distance (docs/algorithms.md section 3, reconstructed).

The authors published neither time weighting nor optimiser; we use SiD's generator-step noise
schedule, optimiser and loss scale, and document that choice.
"""
from dataclasses import dataclass

from ..losses import sim_loss
from ..losses.functional import DIVISORS
from .base import DistillMethod, FewStepConfig, check_choice, check_positive, register_method


@dataclass
class SIMConfig(FewStepConfig):
    name: str = "sim"
    distance: str = "pseudo_huber"  # pseudo_huber | l2
    c: float = 1e-3  # pseudo-Huber c
    divisor: str = "none"  # per-sample stop-gradient divisor of the loss: none | mean_abs
    reuse_samples: bool = False  # the fake step fits the generator step's samples instead of fresh ones (faster; not the recipe)

    def validate(self) -> None:
        super().validate()
        check_choice("method.distance", self.distance, ("pseudo_huber", "l2"))
        check_choice("method.divisor", self.divisor, DIVISORS)
        check_positive("method.c", self.c)


@register_method("sim", config=SIMConfig)
class SIM(DistillMethod):
    """``l_b = S_b / N_b``; options ``distance`` (pseudo_huber | l2), ``c``, ``divisor``."""

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return sim_loss(y, y_real, y_fake, distance=c.distance, c=c.c, divisor=c.divisor,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
