"""Every argument parser of ``fastdistill <command>``."""
from __future__ import annotations

import argparse

from . import commands
from .common import (REPORT_PRESETS, TEXT_TO_IMAGE_PRESET, IntermixedParser, add_student_arguments, floats_list,
                     nonneg_int, positive_float, positive_int, steps_list)

DESCRIPTION = "Distil pretrained diffusion models into one-step and few-step generators."


def add_train_classifier_parser(subparsers) -> argparse.ArgumentParser:
    from ..metrics.digits_classifier import ASSET_NAME

    p = subparsers.add_parser("train-classifier", help="retrain the shipped digits classifier (FID features) or check it",
                              description="Train the digits classifier from scratch (deterministic, a few seconds) and "
                              "write --out, then report its held-out accuracy; --eval-only checks existing weights.")
    p.add_argument("--out", default="fastdistill/assets/" + ASSET_NAME, help="where the trained weights go")
    p.add_argument("--eval-only", action="store_true", help="do not train: report the held-out accuracy of --weights")
    p.add_argument("--weights", default=None, help="with --eval-only: weights to check (default: the shipped ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=positive_int, default=40)
    p.set_defaults(func=commands.train_classifier)
    return p


def add_train_teacher_parser(subparsers) -> argparse.ArgumentParser:
    from ..teachers.digits import ARCH_PRESETS, SHIPPED_TRAINING

    p = subparsers.add_parser(
        "train-teacher", help="train a small EDM teacher (digits, 2-D toys, or your .npy/.npz/image folder)",
        description="Train an EDM-preconditioned teacher with the EDM loss and save its EMA weights "
                    "(fastdistill safetensors format; load with fastdistill.load_teacher).")
    p.add_argument("--data", default="digits",
                   help="built-in dataset (digits, 8gaussians, 25gaussians, checkerboard, swissroll) or a path "
                        "to a .npy/.npz file or an image folder (default: digits)")
    p.add_argument("--out", required=True, help="output .safetensors file (or a directory; with --preset "
                                                "digits-t2i the pipeline folder, replaced once training is done)")
    p.add_argument("--preset", choices=("digits-t2i",), default=None,
                   help="digits-t2i: the shipped text-to-image teacher (a Stable Diffusion pipeline folder: VAE, "
                        "text encoder, tokenizer, UNet, scheduler; about 20 minutes on 2 CPU cores)")
    p.add_argument("--steps", type=positive_int, default=None, help=f"optimiser steps (default {SHIPPED_TRAINING['steps']})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"default {SHIPPED_TRAINING['batch_size']}")
    p.add_argument("--lr", type=positive_float, default=None, help=f"Adam learning rate (default {SHIPPED_TRAINING['lr']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=sorted(ARCH_PRESETS), default=None,
                   help="network preset (default: digits-small for images, mlp for vector data)")
    p.add_argument("--unconditional", action="store_true", help="ignore class labels even if the data have them")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="resize image data to this side (digits: 8 native, 16, 32, ...)")
    p.add_argument("--warmup", type=nonneg_int, default=SHIPPED_TRAINING["lr_warmup_steps"],
                   help="linear lr warm-up steps")
    p.add_argument("--lr-decay", choices=("none", "cosine"), default=SHIPPED_TRAINING["lr_decay"])
    p.add_argument("--weights-dtype", choices=("float32", "float16"), default="float32",
                   help="storage dtype of the saved weights (loaded as float32 either way)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.train_teacher)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    from ..metrics import DIGITS_N

    p = subparsers.add_parser(
        "eval", help="sample quality (FID/KID/precision/recall or SW2/MMD) and time per sample of students and teachers",
        description="Sample students (their trained steps, or k) and teachers (EDM Heun/Euler at any number of "
                    "steps), score them against the data with the same n, print a table and write JSON.")
    p.add_argument("--student", action="append", metavar="CHECKPOINT",
                   help="run directory, checkpoint directory or exported student.safetensors (repeatable)")
    p.add_argument("--student-steps", type=steps_list, default=[None], metavar="K[,K...]",
                   help="student sampling steps (default: each student's trained steps; any for sign/ign students)")
    p.add_argument("--teacher", action="append", metavar="SPEC",
                   help="'digits' (shipped), analytic:NAME (exact toy), or a teacher checkpoint path (repeatable)")
    p.add_argument("--steps", type=steps_list, default=[18], metavar="N[,N...]",
                   help="teacher sampler steps, e.g. 1,2,4,8,18 (Heun: 2N-1 evaluations, Euler: N)")
    p.add_argument("--solver", default="heun", help="heun, euler, or heun,euler (default heun)")
    p.add_argument("--data", default=None, help="dataset name or path (default: inferred: digits / the toy); with --prompts: a folder of reference images for FID")
    p.add_argument("-n", type=int, default=None, help=f"samples per model (default: the held-out size, {DIGITS_N} on digits)")
    p.add_argument("--extractor", default=None, choices=("digits", "inception"),
                   help="FID feature space for images (default: digits; inception for text-to-image models)")
    t2i = p.add_argument_group("text-to-image models (with --prompts)")
    t2i.add_argument("--prompts", help="prompt file: every model samples these prompts (cycled to -n) on the same noise")
    t2i.add_argument("--clip", help="local CLIP model folder (transformers CLIPModel + processor) for the CLIP score")
    t2i.add_argument("--guidance", type=floats_list, default=[1.0], metavar="W[,W...]",
                     help="teachers' classifier-free guidance scales (default 1: none)")
    p.add_argument("--fid-only", action="store_true", help="images: FID only (skip KID and precision/recall)")
    p.add_argument("--out", default=None, help="JSON output path (default: eval.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=commands.evaluate)
    return p


def add_project_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "project", help="project corrupted inputs onto the data manifold with an idempotent student (SIGN/IGN)",
        description="Zero-shot projection / editing: f(y + sigma*eps), re-applied for --steps, with the "
        "time-free student f of a SIGN/IGN checkpoint.")
    add_student_arguments(p)
    p.add_argument("--input", required=True, help=".npy / .npz / image file; images in [-1, 1] or uint8")
    p.add_argument("--sigma", type=float, default=0.0, help="noise added before the first application (>= 0)")
    p.add_argument("--schedule", choices=("reapply", "constant", "karras"), default="reapply",
                   help="after the first step: re-apply without noise, add sigma noise again, or the sampler's levels")
    p.add_argument("--out", required=True, help="output .npy / .npz / .png")
    p.set_defaults(func=commands.project)
    return p


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sample", help="samples of a distilled student (PNG grid + .npz)")
    add_student_arguments(p)
    p.add_argument("-n", type=positive_int, default=None,
                   help="number of samples (default 64); with prompts: samples per prompt, one grid row each (default 8)")
    p.add_argument("--prompt", action="append", help="text-to-image students: a prompt (repeat for several)")
    p.add_argument("--prompts", help="text-to-image students: a prompt file (one a line, or CSV / JSONL)")
    p.add_argument("--out", help="output path stem: <out>.png and <out>.npz; a directory (an existing one, or a path "
                                 "ending in /) gets samples.png and samples.npz (default: <checkpoint>/samples-seed<seed>)")
    p.set_defaults(func=commands.sample)
    return p


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write a student in its format: a text-to-image one as a diffusers "
                                             "pipeline folder, any other as one safetensors file",
                              description="A text-to-image student: the teacher's pipeline folder with the student's "
                              "network, loadable with diffusers' from_pretrained; its README.md shows one-step "
                              "generation. Any other student: one safetensors file (OUT, or OUT/student.safetensors "
                              "unless OUT ends in .safetensors). fastdistill.load_student reads both.")
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("out", help="the new folder (text-to-image) or file")
    p.add_argument("--lora", choices=("merge", "adapter"), default="merge",
                   help="LoRA students: adapters merged into the UNet (default) or kept as pytorch_lora_weights.safetensors")
    p.add_argument("--which", choices=("ema", "generator"), default="ema", help="EMA or raw generator weights")
    p.set_defaults(func=commands.export)
    return p


def add_distill_parser(subparsers) -> argparse.ArgumentParser:
    from ..engine import PRESETS
    from ..engine.config import describe_config

    distill = subparsers.add_parser(
        "distill",
        help="distil a teacher into a one-step generator (default: the digits teacher vs SiD, SIM and DMD students)",
        description="Distil a teacher into a one-step generator. With no --preset or --config, the embedded "
        "default: the shipped digits teacher at 1-18 Heun/Euler steps against one-step SiD, SIM and DMD "
        "students distilled side by side (FID table, time per sample, pictures in runs/digits; at most "
        "10 minutes on 2 CPU cores). Otherwise settings come from a preset or a JSON/TOML config file, "
        "then from key=value overrides (e.g. method.name=sim optim.lr=1e-4; options and overrides mix in any "
        "order); an unknown key is an error that lists the valid ones.",
        epilog=describe_config(), formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_argument("overrides", nargs="*", metavar="key=value",
                         help="dotted config overrides (digits default: applied to every student run; out_dir= is the report's directory)")
    distill.add_argument("--config", help="JSON or TOML config file")
    distill.add_argument("--preset", choices=sorted(PRESETS) + list(REPORT_PRESETS),
                         help="built-in configuration (e.g. toy: the 2-D ring, about a minute); digits-t2i: the shipped "
                              "text-to-image teacher against one-step SiD-LSG, SIM and DMD students (a report, as the "
                              "default); digits-t2i-sweep: SiD-LSG students at guidance 1, 1.5, 3 and 4.5")
    distill.add_argument("--teacher", help="teacher: 'digits', analytic:NAME, an EDM/SiD pickle, a fastdistill safetensors file or a diffusers folder")
    distill.add_argument("--prompts", help=f"text-to-image teachers: the training prompts (one a line, CSV or JSONL); "
                                          f"without --preset / --config the teacher family's preset is used (else {TEXT_TO_IMAGE_PRESET})")
    distill.add_argument("--force", action="store_true", help="take over a run directory locked from another host (force=true)")
    report = distill.add_argument_group("reports only (the digits default, --preset digits-t2i / digits-t2i-sweep)")
    report.add_argument("--methods", help="comma-separated subset of sid,sim,dmd (default: all three)")
    report.add_argument("--budget", type=float, help="wall-clock cap in seconds (digits default: 570; digits-t2i: none)")
    report.add_argument("--workers", type=int, help="concurrent student runs, one thread each (default 3)")
    report.add_argument("--draws", type=int, help="sample draws averaged for the teacher at 35 NFE and each student (default 3)")
    distill.set_defaults(func=commands.distill)
    return distill


def add_config_parser(subparsers) -> argparse.ArgumentParser:
    from ..engine import PRESETS

    p = subparsers.add_parser("config", help="list every config key with its default and meaning, or print a resolved config",
                              description="--list: every key, default and meaning. Otherwise the configuration a "
                              "preset / config file / overrides resolve to, as JSON (validated).")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--list", action="store_true", help="list every config key")
    p.add_argument("--config", help="JSON or TOML config file")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.set_defaults(func=commands.config)
    return p


DEBUG_HELP = "show the full traceback of an error instead of one line (also: FASTDISTILL_DEBUG=1)"
VERBOSE_HELP = ("more output: diffusers' and transformers' loading bars and notices, train-classifier's epochs "
                "(also: FASTDISTILL_VERBOSE=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdistill", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=IntermixedParser)
    sub.add_parser("doctor", help="versions, devices and available loss backends").set_defaults(func=commands.doctor)
    add_distill_parser(sub)
    add_config_parser(sub)
    add_sample_parser(sub)
    add_export_parser(sub)
    add_eval_parser(sub)
    add_project_parser(sub)
    add_train_teacher_parser(sub)
    add_train_classifier_parser(sub)
    for p in sub.choices.values():  # --debug and --verbose after the command too (not resetting one given before it)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser
