"""Per-rank memory of a distillation run with 1 and 2 gloo CPU ranks, replicated (DDP) and sharded
(distributed.strategy=fsdp): prints a table (docs/development.md, "Sharded training").

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fsdp_memory.py [--width 1024] [--depth 4] [--steps 3]
    OMP_NUM_THREADS=1 .venv/bin/python scripts/fsdp_memory.py --pipeline mid

The teacher is an MLP denoiser (``width`` x ``depth`` residual blocks), or with ``--pipeline`` the
Stable Diffusion pipeline of part 1's memory benchmark (``tiny``, or ``mid``: SD 1.5's layout at
1/5 width, a 35M UNet; built in code by tests/tiny_pipelines.py; SiD-LSG's guidance 1.5, batch 2);
generator and fake network start as copies of it. Three numbers per rank, the largest over the ranks:

- state: the bytes this rank holds between steps, counted from the live tensors: its (shard of
  the) parameters of generator, fake network, EMA and teacher, and its Adam moments. Exact.
- build peak: the growth of resident memory (the kernel's high-water mark, VmHWM) while the
  Distiller is built: every rank makes the whole networks before sharding them.
- step peak: what the torch profiler sees allocated during one SiD iteration (batch 16, after
  ``steps`` - 1 warm-up ones) above what was allocated before it, as part 1's memory benchmark
  measures it (``benchmarks/iteration_loops.peak_memory``): gradients, gathered parameters,
  activations, optimiser temporaries.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from iteration_loops import peak_memory  # noqa: E402  (the benchmarks' measure, not a package)
from fastdistill.engine.distributed import free_port, shutdown  # noqa: E402


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Set the high-water mark to the resident memory now (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _held_mib(d) -> float:
    from fastdistill.engine.distributed import local

    def size(t):
        t = local(t)
        return t.numel() * t.element_size()

    total = sum(size(p) for net in (d.G, d.fake, d.ema.module, d.teacher) for p in net.parameters())
    total += sum(size(v) for opt in (d.updates.opt_g, d.updates.opt_f) for st in opt.state.values() for v in st.values()
                 if torch.is_tensor(v))
    return total / 2**20


def _worker(rank: int, world: int, port: int, strategy: str, args, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from fastdistill.engine import DistillConfig, Distiller
    from fastdistill.teachers.mlp import MLPDenoiser

    torch.manual_seed(0)
    if args.pipeline:
        teacher = None
        source = ["teacher.kind=checkpoint", f"teacher.path={args.folder}", f"prompts={args.prompts}",
                  "teacher.dtype=fp32", "batch_size=2", "eval_data=none", "sample_every=0",
                  *(f"method.guidance_{k}=1.5" for k in ("teacher", "fake", "fake_train"))]
    else:
        teacher = MLPDenoiser(data_dim=2, width=args.width, depth=args.depth)
        source = ["teacher.kind=network", "teacher.init=teacher", "batch_size=16"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DistillConfig().with_overrides(source + [
            "method.name=sid", f"steps={args.steps}", f"out_dir={tmp}/run", "progress=false", "ckpt_every=0",
            "threads=1", "nvtx=false", f"distributed.strategy={strategy}", "optim.lr=1e-4"])
        _reset_peak()
        base = _status_mib("VmRSS")
        d = Distiller(cfg, teacher=teacher)
        build = _status_mib("VmHWM") - base
        for _ in range(args.steps - 1):
            d.train_step()
        out[rank] = (_held_mib(d), build, peak_memory(d.train_step, "cpu") / 2**20)
        d.release()
        del d
    shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--pipeline", choices=("tiny", "mid"), help="a Stable Diffusion pipeline teacher instead of the MLP")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as made:
        if args.pipeline:
            sys.path.insert(0, str(REPO))
            from tests.tiny_pipelines import make_sd_pipeline, write_prompt_file

            size = {"tiny": 8, "mid": 32}[args.pipeline]
            args.folder = make_sd_pipeline(Path(made) / "sd", size=args.pipeline, sample_size=size)
            args.prompts = write_prompt_file(Path(made) / "prompts.txt")
            from diffusers import UNet2DConditionModel

            n = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(args.folder / "unet").parameters())
            what = f"Stable Diffusion pipeline ({args.pipeline}), UNet"
            batch = 2
        else:
            from fastdistill.teachers.mlp import MLPDenoiser

            n = sum(p.numel() for p in MLPDenoiser(data_dim=2, width=args.width, depth=args.depth).parameters())
            what = f"MLP denoiser width {args.width}, depth {args.depth}:"
            batch = 16
        print(f"{what} {n / 1e6:.2f} M parameters ({n * 4 / 2**20:.1f} MiB fp32 per copy); SiD, batch {batch}, "
              f"{args.steps} steps, gloo on CPU")
        _table(args)


def _table(args) -> None:
    print(f"{'ranks':>5}  {'strategy':<8}  {'state MiB/rank':>14}  {'build peak MiB/rank':>19}  {'step peak MiB/rank':>18}")
    for world in (1, 2):
        for strategy in ("ddp", "fsdp"):
            port = free_port()
            with mp.Manager() as manager:
                out = manager.dict()
                mp.spawn(_worker, args=(world, port, strategy, args, out), nprocs=world, join=True)
                held, build, step = (max(v[i] for v in out.values()) for i in range(3))
            print(f"{world:>5}  {strategy:<8}  {held:>14.1f}  {build:>19.1f}  {step:>18.1f}", flush=True)


if __name__ == "__main__":
    main()
