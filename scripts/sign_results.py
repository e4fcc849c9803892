"""SIGN vs IGN on the 2-D toy and on digits: the numbers and the pictures of docs/sign.md.

    .venv/bin/python scripts/sign_results.py [--toy-steps 1000] [--toy-teacher 8gaussians] [--out runs/sign-results] [--part toy|digits|all]

Toy: trains ``toy-sign``, ``toy-sign`` on one-step outputs only (``method.sign_steps=1``) and
``toy-ign`` for the same number of iterations and batch (the same budget of generator updates;
IGN has no fake-network step, so SIGN costs more per iteration), then measures sliced
Wasserstein-2 distance to the data at 1/2/4 steps (the Karras re-noising schedule the student
was trained on) and with pure re-application, as mean +- standard error over 4 draws of 16384
points (see ``TOY_N``), next to the data-vs-data floor and the 35-evaluation teacher on the same
draws; the idempotence error mean|f(f(x)) - f(x)| on generated and on data points before and
after training, the root-mean-square of f(x) - x on data; and projection of corrupted points. Writes ``toy.json`` and ``sign_vs_ign_toy.png``.

Digits: trains ``digits-sign`` (shipped teacher, ~10 min on one thread) and IGN from the same
start with the same budget, then measures FID (digits-classifier features, n = 898 against the
reference half) at 1/2/4 steps and 4x re-application, mean +- std over three sample seeds; the
idempotence error on the held-out real digits and on 1-step samples before and after training
and every 100 iterations in between (with one draw's 1-step FID: the curve along training); and
projection of noisy / masked / shifted held-out digits: FID and per-pixel MSE to the clean
digits, of the corrupted inputs and of their projections. Writes ``digits.json`` and
``sign_digits.png``.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEEDS = (0, 1, 2)  # sample seeds of the digits FIDs


def _common(out: Path, name: str, steps: int, seed: int) -> list:
    return [f"steps={steps}", f"out_dir={out / name}", "resume=none", "progress=false", f"seed={seed}",
            "eval_every=0", "ckpt_every=0", "sample_every=0"]


def _sigma_end(d) -> float:
    from fastdistill.sampling import DEFAULT_SIGMA_END

    return getattr(d.cfg.method, "sign_sigma_end", DEFAULT_SIGMA_END)


# ------------------------------------------------------------------------------ toy
# One draw of 4096 points cannot rank the samplers: data vs data alone spreads over 0.03-0.07
# between draws (the 8 modes' counts fluctuate), wider than the gaps being measured. So every
# toy distance is the mean over TOY_DRAWS independent draws (data, z, re-noising) of TOY_N
# points, with its standard error; k-step minus 1-step is paired on the same draws.
TOY_N, TOY_DRAWS = 16384, 4


def _toy_draw(teacher, r: int):
    """Draw ``r``: data, a second independent data set (the floor) and the latents."""
    data = teacher.sample(TOY_N, generator=torch.Generator().manual_seed(100 + r)).float()
    data2 = teacher.sample(TOY_N, generator=torch.Generator().manual_seed(200 + r)).float()
    z = torch.randn((TOY_N, *data.shape[1:]), generator=torch.Generator().manual_seed(300 + r))
    return data, data2, z


def _mean_se(v: list) -> dict:
    t = torch.tensor(v, dtype=torch.float64)
    return {"mean": float(t.mean()), "se": float(t.std() / len(v) ** 0.5), "all": v}


def toy_baselines(teacher) -> dict:
    """Data vs data (the metric's floor) and the teacher's 35-evaluation Heun sampler, on the toy draws."""
    from fastdistill.metrics import sliced_wasserstein
    from fastdistill.sampling import heun_sampler

    floor, heun = [], []
    for r in range(TOY_DRAWS):
        data, data2, z = _toy_draw(teacher, r)
        floor.append(float(sliced_wasserstein(data2, data, seed=1)))
        heun.append(float(sliced_wasserstein(heun_sampler(teacher, z, num_steps=18).float(), data, seed=1)))
    return {"sw_data_vs_data": _mean_se(floor), "sw_teacher_heun35": _mean_se(heun)}


def toy_measure(distiller) -> dict:
    from fastdistill.metrics import sliced_wasserstein
    from fastdistill.projection import project
    from fastdistill.student import generate, idempotence_error

    net = distiller.ema.module.eval()
    s, se = distiller.cfg.method.sigma_init, _sigma_end(distiller)
    modes = {"1step": 1, "2step": 2, "4step": 4, "4step_reapply": 4}
    sw = {m: [] for m in modes}
    for r in range(TOY_DRAWS):
        data, _, z = _toy_draw(distiller.teacher, r)
        for m, k in modes.items():
            x = generate(net, z, s, steps=k, schedule="reapply" if m.endswith("reapply") else "karras",
                         generator=torch.Generator().manual_seed(400 + r), sigma_end=se)
            sw[m].append(float(sliced_wasserstein(x, data, seed=1)))
    out = {f"sw_{m}": _mean_se(v) for m, v in sw.items()}
    for m in ("2step", "4step", "4step_reapply"):
        out[f"sw_{m}_minus_1step"] = _mean_se([a - b for a, b in zip(sw[m], sw["1step"])])
    data, _, z = _toy_draw(distiller.teacher, 0)
    out["idem_err_generated"] = idempotence_error(net, generate(net, z, s, steps=1), s)
    out["idem_err_data"] = idempotence_error(net, data, s)
    # how far f moves the data itself (the reconstruction term's target is 0)
    out["rms_f_minus_x_data"] = float((project(net, data, sigma=0.0, sigma_s=s) - data).square().sum(1).mean().sqrt())
    # projection: data corrupted with Gaussian noise of std 0.3
    corrupted = data + 0.3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(4))
    proj = project(net, corrupted, sigma=0.0, sigma_s=s)
    out["proj_sw_input"] = float(sliced_wasserstein(corrupted, data, seed=1))
    out["proj_sw_output"] = float(sliced_wasserstein(proj, data, seed=1))
    return out


def train(preset: str, out: Path, name: str, overrides=(), measure=toy_measure, track=None, every: int = 100):
    """Train ``preset`` with ``overrides``; ``measure`` before and after, ``track`` (cheap) every
    ``every`` iterations (its seconds are excluded from ``train_s``)."""
    from fastdistill.engine import Distiller, preset_config

    cfg = preset_config(preset).with_overrides(list(overrides))
    curve, spent = [], [0.0]

    def cb(d, row):
        if track is not None and d.step % every == 0:
            t = time.time()
            curve.append({"step": d.step, **track(d)})
            spent[0] += time.time() - t

    d = Distiller(cfg, callback=cb)
    before = measure(d)
    cb(d, None)
    t0 = time.time()
    res = d.run()
    train_s = time.time() - t0 - spent[0]
    after = measure(d)
    r = {"before": before, "after": after, "train_s": train_s, "checkpoint": res.checkpoint,
         "metrics": res.quality.log_row() if res.quality is not None else {}}
    if curve:
        r["curve"] = curve
    return d, r


def toy_picture(dists: dict, path: Path) -> Path:
    from fastdistill.plotting import scatter_panels
    from fastdistill.student import generate

    panels = []
    first = next(iter(dists.values()))
    panels.append(("data", first.teacher.sample(2000, generator=torch.Generator().manual_seed(1))))
    g = torch.Generator().manual_seed(2)
    z = torch.randn((2000, *first.shape), generator=g)
    for name, d in dists.items():
        s = d.cfg.method.sigma_init
        net = d.ema.module.eval()
        for steps in (1, 4):
            panels.append((f"{name} {steps} step{'s' if steps > 1 else ''}",
                           generate(net, z, s, steps=steps, generator=torch.Generator().manual_seed(3),
                                    sigma_end=_sigma_end(d))))
    return scatter_panels(panels, path, size=240)


def run_toy(out: Path, steps: int, seed: int, sign_set=(), teacher: str = "8gaussians") -> dict:
    """SIGN, SIGN trained on one-step outputs only (the ablation) and IGN, plus the baselines,
    all on the analytic toy ``teacher`` (``teacher.name``)."""
    results, dists = {}, {}
    runs = (("SIGN", "toy-sign", "toy-sign", list(sign_set)),
            ("SIGN, one-step training", "toy-sign", "toy-sign-k1", list(sign_set) + ["method.sign_steps=1"]),
            ("IGN", "toy-ign", "toy-ign", []))
    for name, preset, run_dir, extra in runs:
        d, r = train(preset, out, name, _common(out, run_dir, steps, seed) + [f"teacher.name={teacher}"] + extra)
        results[name], dists[name] = r, d
        print(name, json.dumps(r, indent=1), flush=True)
    results["baselines"] = toy_baselines(dists["SIGN"].teacher)
    (out / "toy.json").write_text(json.dumps(results, indent=2))
    print("picture:", toy_picture({k: dists[k] for k in ("SIGN", "IGN")}, out / "sign_vs_ign_toy.png"))
    return results


# ------------------------------------------------------------------------------ digits
@functools.lru_cache(maxsize=1)
def heldout_digits():
    """The held-out half of the digits (the FID baseline set) and its integer labels; loaded
    once (the training-curve tracker asks for it every 100 iterations). Callers must not modify it."""
    from fastdistill.data import load_dataset
    from fastdistill.metrics.quality import SPLIT_SEED, reference_data

    ref = reference_data("digits")
    src = load_dataset("digits")
    perm = torch.randperm(src.data.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    idx = perm[(src.data.shape[0] + 1) // 2:]
    x, labels = src.data[idx].float(), src.labels[idx]
    assert torch.equal(x, ref.heldout)
    return ref, x, labels


def corruptions(x: torch.Tensor) -> dict:
    """Noisy (Gaussian, std 0.4, clipped), masked (bottom half blanked), shifted (2 pixels right)."""
    noisy = (x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).clamp(-1, 1)
    masked = x.clone()
    masked[:, :, 4:, :] = -1.0
    shifted = torch.full_like(x, -1.0)
    shifted[..., 2:] = x[..., :-2]
    return {"noisy": noisy, "masked": masked, "shifted": shifted}


def digits_samples(net, s: float, sigma_end: float, steps, seed: int, n: int = 898) -> torch.Tensor:
    """Samples on the evaluation draw of ``seed`` (the same latents and class-balanced labels
    as the main job's FIDs, ``fastdistill.sampling.draw``)."""
    from fastdistill.student import Student

    sched = "reapply" if steps == "reapply" else "karras"
    k = 4 if steps == "reapply" else steps
    return Student.from_network(net, s, sigma_end=sigma_end).sample(n, steps=k, seed=seed, schedule=sched)


def digits_track(distiller) -> dict:
    """The idempotence errors on the held-out real digits and on 1-step samples (seed 0), and
    that draw's FID: about 3 s, for the curve along training."""
    from fastdistill.metrics import quality
    from fastdistill.sampling import draw
    from fastdistill.student import idempotence_error

    net = distiller.ema.module.eval()
    s = distiller.cfg.method.sigma_init
    ref, x, lab = heldout_digits()
    x1 = digits_samples(net, s, _sigma_end(distiller), 1, SEEDS[0])
    return {"idem_err_data": idempotence_error(net, x, s, torch.nn.functional.one_hot(lab, 10).float()),
            "idem_err_generated": idempotence_error(net, x1, s, draw(x1.shape[0], (1, 8, 8), SEEDS[0], label_dim=10, noises=0)[1]),
            "fid_1": quality(x1, ref, full=False)["fid"]}


def digits_measure(distiller) -> dict:
    from fastdistill.metrics import quality
    from fastdistill.projection import project
    from fastdistill.student import Student

    net = distiller.ema.module.eval()
    s, se = distiller.cfg.method.sigma_init, _sigma_end(distiller)
    ref, x, lab = heldout_digits()
    out = {}
    for steps in (1, 2, 4, "reapply"):
        fids = [quality(digits_samples(net, s, se, steps, seed), ref, full=False)["fid"] for seed in SEEDS]
        t = torch.tensor(fids)
        out[f"fid_{steps}"] = {"mean": float(t.mean()), "std": float(t.std()), "all": fids}
    track = digits_track(distiller)
    out["idem_err_data"], out["idem_err_generated"] = track["idem_err_data"], track["idem_err_generated"]
    for name, bad in corruptions(x).items():
        row = {"fid_input": quality(bad, ref, full=False)["fid"], "mse_input": float((bad - x).square().mean())}
        for sigma in (0.0, 0.3):
            p = project(Student.from_network(net, s), bad, sigma=sigma, cond=lab, seed=0)
            row[f"fid_proj_{sigma}"] = quality(p, ref, full=False)["fid"]
            row[f"mse_proj_{sigma}"] = float((p - x).square().mean())
        out[f"proj_{name}"] = row
    return out


def digits_picture(d, path: Path, n: int = 12) -> Path:
    """Rows: each corruption and its projection (sigma 0.3); samples at 1, 2 and 4 steps (same z)."""
    from PIL import Image, ImageDraw

    from fastdistill.projection import project
    from fastdistill.student import Student

    net = d.ema.module.eval()
    s, se = d.cfg.method.sigma_init, _sigma_end(d)
    _, x, lab = heldout_digits()
    x, lab = x[:n], lab[:n]
    rows = []
    for name, bad in corruptions(x).items():
        rows += [(name, bad), ("projected", project(Student.from_network(net, s), bad, sigma=0.3, cond=lab, seed=0))]
    for k in (1, 2, 4):
        rows.append((f"{k} step{'s' if k > 1 else ''}", digits_samples(net, s, se, k, seed=0, n=n)))
    cell, pad, left = 32, 2, 90
    img = Image.new("L", (left + n * (cell + pad), len(rows) * (cell + pad)), 255)
    draw = ImageDraw.Draw(img)
    for r, (label, batch) in enumerate(rows):
        y0 = r * (cell + pad)
        draw.text((4, y0 + cell // 2 - 5), label, fill=0)
        arr = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
        for i in range(n):
            tile = Image.fromarray(arr[i]).resize((cell, cell), Image.NEAREST)
            img.paste(tile, (left + i * (cell + pad), y0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def run_digits(out: Path, steps: int, seed: int, ign: bool, sign_set=()) -> dict:
    results = {}
    runs = [("SIGN", list(sign_set))]
    if ign:  # same start, data, batch and number of generator updates; IGN's official optimiser
        runs.append(("IGN", ["method.name=ign", "optim.beta1=0.5", "optim.beta2=0.999"]))
    dists = {}
    for name, extra in runs:
        d, r = train("digits-sign", out, name, _common(out, f"digits-{name.lower()}", steps, seed) + extra,
                     measure=digits_measure, track=digits_track)
        results[name], dists[name] = r, d
        print(name, json.dumps(r, indent=1), flush=True)
        (out / "digits.json").write_text(json.dumps(results, indent=2))
    print("picture:", digits_picture(dists["SIGN"], out / "sign_digits.png"))
    return results


def toy_table(results: dict) -> str:
    def sw(m):
        return f"{m['mean']:.4f} ± {m['se']:.4f}"

    rows = ["| | 1 step | 2 steps | 4 steps | 4x re-apply | 2 steps - 1 step (paired) | idempotence error on data | "
            "projection of noisy points |", "|---|---|---|---|---|---|---|---|"]
    base = results.get("baselines")
    if base:
        rows.append(f"| data vs data (floor) | {sw(base['sw_data_vs_data'])} | | | | | | |")
        rows.append(f"| teacher, Heun, 35 evaluations | {sw(base['sw_teacher_heun35'])} | | | | | | |")
    for name, r in results.items():
        if name == "baselines":
            continue
        a, b = r["after"], r["before"]
        diff = a["sw_2step_minus_1step"]
        rows.append(f"| {name} | {sw(a['sw_1step'])} | {sw(a['sw_2step'])} | {sw(a['sw_4step'])} | "
                    f"{sw(a['sw_4step_reapply'])} | {diff['mean']:+.4f} ± {diff['se']:.4f} | "
                    f"{b['idem_err_data']:.3f} -> {a['idem_err_data']:.3f} | "
                    f"{a['proj_sw_input']:.3f} -> {a['proj_sw_output']:.3f} |")
    return "\n".join(rows)


def digits_table(results: dict) -> str:
    def fid(m, k):
        return f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}"

    def idem(m):
        return f"{m['idem_err_data']:.4f} / {m['idem_err_generated']:.4f}" if "idem_err_generated" in m else \
            f"{m['idem_err_data']:.4f} / -"

    rows = ["| | 1 step | 2 steps | 4 steps | 4x re-apply | idempotence error, real digits / 1-step samples |",
            "|---|---|---|---|---|---|"]
    first = next(iter(results.values()))["before"]
    rows.append(f"| start (teacher D(x; 2.5)) | {fid(first, 'fid_1')} | {fid(first, 'fid_2')} | {fid(first, 'fid_4')} | "
                f"{fid(first, 'fid_reapply')} | {idem(first)} |")
    for name, r in results.items():
        a = r["after"]
        rows.append(f"| {name} ({r['train_s']:.0f} s) | {fid(a, 'fid_1')} | {fid(a, 'fid_2')} | {fid(a, 'fid_4')} | "
                    f"{fid(a, 'fid_reapply')} | {idem(a)} |")
    curves = {n: r["curve"] for n, r in results.items() if "curve" in r}
    if curves:
        rows += ["", "| along training: idempotence error real / samples, 1-step FID (one draw) | "
                 + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
        for i, point in enumerate(next(iter(curves.values()))):
            rows.append(f"| {point['step']} | " + " | ".join(
                f"{c[i]['idem_err_data']:.4f} / {c[i]['idem_err_generated']:.4f}, {c[i]['fid_1']:.3f}"
                for c in curves.values()) + " |")
    rows += ["", "| projection (sigma 0 / 0.3), FID and MSE to the clean digits | noisy | masked | shifted |",
             "|---|---|---|---|"]
    cols = ("noisy", "masked", "shifted")
    rows.append("| corrupted input | " + " | ".join(
        f"{first[f'proj_{c}']['fid_input']:.2f} / mse {first[f'proj_{c}']['mse_input']:.3f}" for c in cols) + " |")
    named = [("start", first)] + [(n, r["after"]) for n, r in results.items()]
    for name, m in named:
        rows.append(f"| {name} | " + " | ".join(
            f"{m[f'proj_{c}']['fid_proj_0.0']:.2f} / {m[f'proj_{c}']['fid_proj_0.3']:.2f}, "
            f"mse {m[f'proj_{c}']['mse_proj_0.0']:.3f} / {m[f'proj_{c}']['mse_proj_0.3']:.3f}" for c in cols) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("toy", "digits", "all"), default="all")
    ap.add_argument("--toy-steps", type=int, default=1000)
    ap.add_argument("--toy-teacher", default="8gaussians", help="the toy part's analytic teacher (teacher.name: "
                    "8gaussians, 25gaussians, ringN, ...)")
    ap.add_argument("--digits-steps", type=int, default=500)
    ap.add_argument("--no-digits-ign", action="store_true", help="skip the IGN run on digits")
    ap.add_argument("--out", default="runs/sign-results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true", help="only print the tables of the results already in --out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the SIGN runs (e.g. method.sign_steps=1, the one-step-only "
                         "ablation, on digits; the toy part trains that ablation itself)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        for f, fmt in (("toy.json", toy_table), ("digits.json", digits_table)):
            if (out / f).is_file():
                print(fmt(json.loads((out / f).read_text())))
        return 0
    if args.part in ("toy", "all"):
        print(toy_table(run_toy(out, args.toy_steps, args.seed, args.set, args.toy_teacher)))
    if args.part in ("digits", "all"):
        print(digits_table(run_digits(out, args.digits_steps, args.seed, not args.no_digits_ign, args.set)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
