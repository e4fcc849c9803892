"""Named presets: the embedded toy default, the digits and report recipes, the EDM-scale and SD 1.5 recipes.

Each preset is a function returning a fresh :class:`~fastdistill.engine.config.DistillConfig`,
registered here in :data:`~fastdistill.engine.config.PRESETS` under the name that ``distill --preset``
and ``preset=`` in a config file accept (the engine package imports this module).
"""
from __future__ import annotations

from ..methods import MethodConfig, method_config
from .config import PRESETS, DistillConfig, TeacherConfig, switch_method


def _toy() -> DistillConfig:
    """The embedded default: 8-Gaussian ring, exact analytic teacher, a few minutes on 2 CPU cores.

    The generator and fake network start from an MLP denoiser fitted to the teacher (the
    analytic teacher has no weights to copy). DMD is the default method here because it reaches
    the teacher's quality on this toy within ~1000 iterations; SiD needs several times more
    iterations on these sharp, well-separated modes (``preset=toy-sid``).
    """
    cfg = DistillConfig()
    cfg.teacher = TeacherConfig(kind="analytic", name="8gaussians", init="fit", fit_steps=1000, fit_batch=512)
    cfg.method = method_config("dmd")
    cfg.optim.lr = 1e-4
    cfg.optim.fake_lr = 1e-3
    cfg.ema.halflife_kimg = 20.0
    cfg.batch_size = 256
    cfg.steps = 1500
    cfg.threads = 1
    cfg.ckpt_every = 500
    cfg.log_every = 50
    cfg.eval_every = 250
    cfg.out_dir = "runs/toy"
    return cfg


def _toy_sid() -> DistillConfig:
    """The toy with SiD (official loss and schedule): slower on this toy; 6000 iterations."""
    cfg = _toy()
    cfg.method = switch_method(cfg.method, "sid")
    cfg.steps = 6000
    cfg.eval_every = 500
    cfg.out_dir = "runs/toy-sid"
    return cfg


def _toy_sign() -> DistillConfig:
    """SIGN (reconstruction, docs/algorithms.md section 5) on the 2-D toy: time-free student
    ``f(x) = D_theta(x; 2.5)`` from the fitted teacher, DMD as L_dist on this toy (fast here, as
    for ``toy``), idempotence / reconstruction / flow terms on the exact data."""
    cfg = _toy()
    cfg.method = switch_method(cfg.method, "sign")
    cfg.method.sign_dist = "dmd"
    cfg.out_dir = "runs/toy-sign"
    return cfg


def _toy_ign() -> DistillConfig:
    """The IGN baseline on the 2-D toy with its official optimiser (Adam lr 1e-4, betas (0.5, 0.999))."""
    cfg = _toy()
    cfg.method = switch_method(cfg.method, "ign")
    cfg.optim.lr = 1e-4
    cfg.optim.beta1, cfg.optim.beta2 = 0.5, 0.999
    cfg.out_dir = "runs/toy-ign"
    return cfg


def _digits_sign() -> DistillConfig:
    """SIGN on scikit-learn's 8x8 digits with the shipped digits teacher (``teacher.path=digits``
    resolves to the shipped digits teacher) and the real digits as data.

    Budgeted like ``digits`` (batch 32, fake_lr 3e-4, EMA half-life 5 kimg with ramp-up 0.5):
    about 7 minutes on one CPU thread; ``scripts/sign_results.py --part digits`` measures it.
    At weight 1 the SiD term's gradient is about 1000x the idempotent terms' on digits (norms
    ~760 against 0.5-0.9), i.e. they would be switched off. ``l_idem = l_rec = 3000``: at 100
    (each about a tenth of SiD) the idempotence error did not fall (real digits 0.045 -> 0.044,
    1-step samples 0.020 -> 0.056); at 3000 it falls on real digits all along (-> 0.026) and on
    1-step samples after the first 100 iterations, where they sharpen (0.036 -> 0.025), and the
    1-step FID improves too; at 10000 the FID gets worse. ``l_rec`` must be as strong as
    ``l_idem``: with ``l_rec = 100`` the map collapses onto blurry fixed points (1-step FID 1.27).
    The price: a near-identity map around the data repairs masked / shifted digits much less than
    the weaker-weighted one did. ``sign_pos_decay = 0.25``: three quarters of the generated
    samples are the sampler's first application (a quarter when uniform), which lowers the
    1-step FID and its idempotence error (0.5 is between) and makes an iteration cheaper.
    ``l_flow`` stays 100.
    """
    cfg = _digits()
    cfg.data = "digits"
    cfg.method = method_config("sign", sign_dist="sid", l_idem=3000.0, l_rec=3000.0, l_flow=100.0, sign_pos_decay=0.25)
    cfg.steps = 500
    cfg.eval_every = 0
    cfg.progress = True
    cfg.out_dir = "runs/digits-sign"
    return cfg


def _digits() -> DistillConfig:
    """SiD on scikit-learn's 8x8 digits with the shipped digits teacher (``teacher.path=digits``).

    Budgeted for the digits report (``fastdistill.reports.digits``, the CLI's default): SiD, SIM
    and DMD side by side, one process each, after the teacher table, in under 10 minutes on 2
    CPU cores; ``steps=3000`` (about 35 minutes on one core) gets closer to the teacher.
    Generator, fake network and EMA start as copies of the teacher (SiD's set-up); FID in the
    digits classifier's features is logged every ``eval_every`` steps (``eval_data=digits``)
    and drawn in ``fid_vs_iterations.png``.
    """
    cfg = _report_budget(DistillConfig())
    cfg.teacher = TeacherConfig(kind="checkpoint", path="digits", init="teacher")
    cfg.eval_data = "digits"
    cfg.eval_every = 100
    cfg.eval_samples = 898
    cfg.out_dir = "runs/digits"
    return cfg


def _report_budget(cfg: DistillConfig) -> DistillConfig:
    """The settings of the digits reports' students, three of which train side by side on 2 CPU
    cores within a report's budget: batch 32, 600 iterations (about 0.65 s each on one thread),
    lr 1e-4 with a faster fake network, a short EMA, no checkpoints, no progress bar."""
    cfg.optim.lr = 1e-4
    cfg.optim.fake_lr = 3e-4  # the fake network tracks the moving generator faster (measured: smoother FID curves)
    cfg.ema.halflife_kimg = 5.0
    cfg.ema.rampup = 0.5  # longer EMA early on: the 1e-4 generator oscillates, its EMA falls monotonically
    cfg.batch_size = 32
    cfg.steps = 600
    cfg.threads = 1
    cfg.ckpt_every = 0
    cfg.log_every = 50
    cfg.progress = False
    return cfg


def _digits_sim() -> DistillConfig:
    """SIM (pseudo-Huber, c=1e-3) on digits with the settings of ``digits``."""
    cfg = _digits()
    cfg.method = switch_method(cfg.method, "sim")
    cfg.out_dir = "runs/digits-sim"
    return cfg


def _digits_dmd() -> DistillConfig:
    """DMD on digits with the settings of ``digits`` (cheaper per step: no gradient through the scores)."""
    cfg = _digits()
    cfg.method = switch_method(cfg.method, "dmd")
    cfg.out_dir = "runs/digits-dmd"
    return cfg


def _cifar10() -> DistillConfig:
    """Official SiD CIFAR-10 settings (teacher.path must point at the EDM checkpoint)."""
    cfg = DistillConfig()
    cfg.teacher = TeacherConfig(kind="checkpoint", path="", init="teacher")
    cfg.optim.lr = 1e-5
    cfg.batch_size = 256
    cfg.steps = 400_000
    cfg.ema.halflife_kimg = 500.0
    cfg.ckpt_every = 2000
    cfg.log_every = 100
    cfg.sample_every = 2000
    cfg.out_dir = "runs/cifar10"
    return cfg


def _ffhq64() -> DistillConfig:
    cfg = _cifar10()
    cfg.batch_size = 512
    cfg.out_dir = "runs/ffhq64"
    return cfg


def _afhq64() -> DistillConfig:
    cfg = _ffhq64()
    cfg.optim.lr = 5e-6
    cfg.out_dir = "runs/afhq64"
    return cfg


def _imagenet64() -> DistillConfig:
    cfg = _cifar10()
    cfg.optim.lr = 4e-6
    cfg.batch_size = 8192
    cfg.precision = "bf16"
    cfg.out_dir = "runs/imagenet64"
    return cfg


SD_FAMILY = "Stable Diffusion 1.x/2.x"  # the family of the SD 1.5 recipes (teachers/families/sd.py)


def _pipeline_recipe(method: MethodConfig, lr: float, batch_size: int, out_dir: str) -> DistillConfig:
    """What the text-to-image presets share: a pipeline teacher (``--teacher DIR``) copied into the
    generator and fake network, one learning rate for both, 20000 iterations with checkpoints
    and pictures every 500, no FID tracking during training."""
    cfg = DistillConfig()
    cfg.teacher = TeacherConfig(kind="checkpoint", path="", init="teacher")
    cfg.method = method
    cfg.optim.lr = cfg.optim.fake_lr = lr
    cfg.batch_size = batch_size
    cfg.steps = 20000
    cfg.ckpt_every = 500
    cfg.sample_every = 500
    cfg.eval_data = "none"
    cfg.out_dir = out_dir
    return cfg


def _sid_lsg_sd15() -> DistillConfig:
    """SiD-LSG's recipe for Stable Diffusion 1.5 / 2.1-base (docs/algorithms.md section 9):
    ``distill --teacher PIPELINE_DIR --prompts FILE``. SiD with alpha 1 and all four guidance
    scales 1.5 (the paper's best FID), timesteps in [20, 980), generator input at t 625,
    Adam betas (0, 0.999) with lr 1e-6 for both networks, loss scales 1, EMA half-life 50 kimg,
    batch 512, fp32 throughout (the frozen teacher too: ``teacher.dtype=fp32``; ``auto`` halves its
    memory). Left out: the paper's 8-GPU throughput (here: whatever batch fits) and its COCO
    evaluation during training (``fastdistill eval`` afterwards)."""
    cfg = _pipeline_recipe(method_config("sid", alpha=1.0, generator_loss_scale=1.0, fake_loss_scale=1.0,
                                         noise_levels="teacher", guidance_teacher=1.5, guidance_fake=1.5,
                                         guidance_fake_train=1.5), lr=1e-6, batch_size=512, out_dir="runs/sid-lsg-sd15")
    cfg.teacher.dtype = "fp32"
    cfg.teacher.family = SD_FAMILY
    cfg.ema.halflife_kimg = 50.0
    return cfg


def _dmd2_sd15_nogan() -> DistillConfig:
    """DMD2's Stable Diffusion 1.5 recipe without its GAN stage (so not its published FID 8.35;
    9.28 was reported without the GAN): teacher guidance 1.75, fake network unguided, timesteps
    in [20, 980), generator input at t 999 (DMD2's conditioning timestep), AdamW lr 1e-5 for both
    networks with betas (0.9, 0.999) and weight decay 0.01, gradient norms clipped at 10, 10 fake
    updates per generator update, batch 2048 (32 on each of 64 GPUs). Left out: the GAN head on
    real latents and the second stage at lr 5e-7."""
    cfg = _pipeline_recipe(method_config("dmd", generator_loss_scale=1.0, fake_loss_scale=1.0, noise_levels="teacher",
                                         t_init=999, guidance_teacher=1.75),
                           lr=1e-5, batch_size=2048, out_dir="runs/dmd2-sd15-nogan")
    cfg.optim.beta1, cfg.optim.beta2 = 0.9, 0.999
    cfg.optim.weight_decay = 0.01
    cfg.optim.clip_grad = 10.0
    cfg.optim.fake_steps = 10
    cfg.teacher.family = SD_FAMILY
    return cfg


#: the guidance scale of the digits text-to-image presets (every SiD-LSG kappa; DMD2's teacher guidance)
DIGITS_T2I_GUIDANCE = 1.5


def _digits_t2i(method: MethodConfig, out_dir: str) -> DistillConfig:
    """What the digits text-to-image presets share: the shipped pipeline teacher
    (``teacher.path=digits-t2i``, fp32) and its training prompts, with the digits report's budget
    (:func:`_report_budget`), so the report (``distill --preset digits-t2i``) runs three students
    side by side on 2 cores."""
    from ..teachers.digits_t2i import PROMPT_FILES, digits_t2i_path

    cfg = _report_budget(_pipeline_recipe(method, lr=1e-4, batch_size=32, out_dir=out_dir))
    cfg.teacher.path = "digits-t2i"
    cfg.teacher.dtype = "fp32"
    cfg.prompts = str(digits_t2i_path() / PROMPT_FILES["train"])
    cfg.sample_every = 0
    return cfg


def _digits_t2i_sid() -> DistillConfig:
    """SiD-LSG (alpha 1, all four guidance scales :data:`DIGITS_T2I_GUIDANCE`) on the digits
    text-to-image teacher: a one-step student that answers prompts like "a handwritten seven"."""
    g = DIGITS_T2I_GUIDANCE
    return _digits_t2i(method_config("sid", alpha=1.0, generator_loss_scale=1.0, guidance_teacher=g, guidance_fake=g,
                                     guidance_fake_train=g), "runs/digits-t2i-sid")


def _digits_t2i_sim() -> DistillConfig:
    """SIM guided as SiD-LSG on the digits text-to-image teacher."""
    g = DIGITS_T2I_GUIDANCE
    return _digits_t2i(method_config("sim", generator_loss_scale=1.0, guidance_teacher=g, guidance_fake=g,
                                     guidance_fake_train=g), "runs/digits-t2i-sim")


def _digits_t2i_dmd() -> DistillConfig:
    """DMD with DMD2's guidance (the teacher only; fake network unguided) on the digits
    text-to-image teacher, generator input at t 999 as DMD2's; no GAN stage."""
    return _digits_t2i(method_config("dmd", generator_loss_scale=1.0, t_init=999,
                                     guidance_teacher=DIGITS_T2I_GUIDANCE), "runs/digits-t2i-dmd")


PRESETS.update({
    "toy": _toy, "toy-sid": _toy_sid, "toy-sign": _toy_sign, "toy-ign": _toy_ign,
    "digits": _digits, "digits-sim": _digits_sim, "digits-dmd": _digits_dmd, "digits-sign": _digits_sign,
    "cifar10": _cifar10, "ffhq64": _ffhq64, "afhq64": _afhq64, "imagenet64": _imagenet64,
    "sid-lsg-sd15": _sid_lsg_sd15, "dmd2-sd15-nogan": _dmd2_sd15_nogan,
    "digits-t2i-sid": _digits_t2i_sid, "digits-t2i-sim": _digits_t2i_sim, "digits-t2i-dmd": _digits_t2i_dmd,
})
