"""DMD / Diff-Instruct (docs/algorithms.md section 4, DMD2 form): scores evaluated without gradient."""
from dataclasses import dataclass

from ..losses import dmd_loss
from ..losses.functional import DIVISORS
from .base import DistillMethod, FewStepConfig, check_choice, register_method

@dataclass
class DMDConfig(FewStepConfig):
    name: str = "dmd"
    divisor: str = "mean_abs"  # per-sample stop-gradient divisor: mean_abs (DMD2 normalisation) | none (Diff-Instruct)
    reuse_samples: bool = True  # the fake step fits the generator step's samples (DMD2's recipe; saves a generator forward); false: fresh samples

    def validate(self) -> None:
        super().validate()
        check_choice("method.divisor", self.divisor, DIVISORS)


@register_method("dmd", config=DMDConfig)
class DMD(DistillMethod):
    """``l_b = 0.5 |(yf - yr)/w|^2`` with gradient ``g`` into y only; option ``divisor``."""

    scores_need_grad = False

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return dmd_loss(y, y_real, y_fake, divisor=c.divisor,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
