"""gloo on CPU: do FSDP2's collectives (all_gather_single, reduce_scatter_single with SUM and AVG)
give the right values in fp32 and bf16? FSDP2 reduce-scatters fp32/bf16 gradients with AVG.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/check_gloo_collectives.py

torch 2.14 (gloo): every line says ok (docs/development.md, "Sharded training").
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastdistill.engine.distributed import free_port


def worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    lines = []
    for dt in (torch.float32, torch.bfloat16):
        out = torch.empty(4, dtype=dt)
        dist.all_gather_single(out, torch.full((2,), rank + 1.0, dtype=dt))
        ag = out.tolist() == [1, 1, 2, 2]
        res = {}
        for op in ("SUM", "AVG"):
            o = torch.empty(2, dtype=dt)
            try:
                dist.reduce_scatter_single(o, torch.arange(4, dtype=dt) * (rank + 1), op=getattr(dist.ReduceOp, op))
                exp = [x * 3 / (2 if op == "AVG" else 1) for x in range(2 * rank, 2 * rank + 2)]
                res[op] = "ok" if o.tolist() == exp else f"WRONG {o.tolist()} != {exp}"
            except (RuntimeError, ValueError) as exc:  # an op gloo lacks
                res[op] = f"FAIL {type(exc).__name__}: {str(exc)[:100]}"
        lines.append(f"rank {rank} {dt}: all_gather_single {'ok' if ag else f'WRONG {out.tolist()}'}, "
                     f"reduce_scatter_single {res}")
    for r in range(2):  # rank by rank, so the lines do not interleave
        if r == rank:
            print("\n".join(lines), file=sys.stderr, flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    port = free_port()
    mp.spawn(worker, args=(port,), nprocs=2)
