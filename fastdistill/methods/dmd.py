"""DMD / Diff-Instruct (docs/algorithms.md section 4, DMD2 form): scores evaluated without gradient."""
from dataclasses import dataclass

from ..losses import dmd_loss
from .base import DistillMethod, MethodConfig, check_choice, register_method

DMD_NORMALIZATIONS = ("mean_abs", "none")


@dataclass
class DMDConfig(MethodConfig):
    name: str = "dmd"
    normalize: str = "mean_abs"  # normalisation: mean_abs | none (Diff-Instruct)

    def validate(self) -> None:
        super().validate()
        check_choice("method.normalize", self.normalize, DMD_NORMALIZATIONS)


@register_method("dmd", config=DMDConfig)
class DMD(DistillMethod):
    """``l_b = 0.5 |(yf - yr)/w|^2`` with gradient ``g`` into y only; option ``normalize``."""

    scores_need_grad = False

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return dmd_loss(y, y_real, y_fake, normalize=c.normalize,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
