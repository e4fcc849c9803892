"""SIGN vs IGN on the 2-D toy (and optionally digits): the numbers and the picture of the README.

    .venv/bin/python scripts/sign_results.py [--steps 1500] [--out runs/sign-results] [--digits]

Trains ``toy-sign`` and ``toy-ign`` for the same number of iterations and batch (the same
budget of generator updates; IGN has no fake-network step, so SIGN costs more per iteration),
then measures on 4096 samples: sliced Wasserstein-2 distance to the data at 1/2/4 steps (Karras
re-noising schedule) and with pure re-application, the idempotence error mean|f(f(x)) - f(x)|
on generated and on data points before and after training, and projection of corrupted
points. Writes ``results.json`` and ``sign_vs_ign.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def toy_measure(distiller, n: int = 4096) -> dict:
    from fastdistill.metrics import sliced_wasserstein
    from fastdistill.projection import project
    from fastdistill.student import generate, idempotence_error

    net = distiller.ema.module.eval()
    s = distiller.cfg.method.sigma_init
    data = distiller.teacher.sample(n, generator=torch.Generator().manual_seed(1)).float()
    g = torch.Generator().manual_seed(2)
    z = torch.randn((n, *distiller.shape), generator=g)
    out = {}
    for steps in (1, 2, 4):
        x = generate(net, z, s, steps=steps, generator=torch.Generator().manual_seed(3))
        out[f"sw_{steps}step"] = float(sliced_wasserstein(x, data, seed=1))
    x = generate(net, z, s, steps=4, schedule="reapply")
    out["sw_4step_reapply"] = float(sliced_wasserstein(x, data, seed=1))
    x1 = generate(net, z, s, steps=1)
    out["idem_err_generated"] = idempotence_error(net, x1, s)
    out["idem_err_data"] = idempotence_error(net, data, s)
    # projection: data corrupted with Gaussian noise of std 0.3
    corrupted = data + 0.3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(4))
    proj = project(net, corrupted, sigma=0.0, sigma_s=s)
    out["proj_sw_input"] = float(sliced_wasserstein(corrupted, data, seed=1))
    out["proj_sw_output"] = float(sliced_wasserstein(proj, data, seed=1))
    return out


def train(preset: str, steps: int, out: Path, seed: int = 0, overrides=()):
    from fastdistill.engine import DistillConfig, Distiller, preset_config

    cfg = preset_config(preset).with_overrides([f"steps={steps}", f"out_dir={out / preset}", "resume=none",
                                                "progress=false", f"seed={seed}", "eval_every=0",
                                                "ckpt_every=0", *overrides])
    d = Distiller(cfg)
    before = toy_measure(d)
    t0 = time.time()
    res = d.run()
    after = toy_measure(d)
    return d, {"before": before, "after": after, "train_s": time.time() - t0, "checkpoint": res.checkpoint,
               "teacher_sw_heun35": res.metrics.get("sw_teacher_heun35"),
               "sw_data_vs_data": res.metrics.get("sw_data_vs_data")}


def picture(dists: dict, path: Path) -> Path:
    from fastdistill.engine.visual import scatter_panels
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
                           generate(net, z, s, steps=steps, generator=torch.Generator().manual_seed(3))))
    return scatter_panels(panels, path, size=240)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default="runs/sign-results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, dists = {}, {}
    for name, preset in (("SIGN", "toy-sign"), ("IGN", "toy-ign")):
        d, r = train(preset, args.steps, out, args.seed)
        results[name], dists[name] = r, d
        print(name, json.dumps(r, indent=1), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("picture:", picture(dists, out / "sign_vs_ign.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
