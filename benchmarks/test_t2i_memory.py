"""Memory of text-to-image distillation: full fine-tuning against LoRA (each network with its own
copy of the base weights, ``untied``, or all of them on the teacher's, the default), gradient
checkpointing and a bf16 frozen teacher, on a Stable Diffusion pipeline built in code.

    pytest benchmarks/test_t2i_memory.py -s        # tiny, mid-size (SD 1.5's layout at 1/5 width, 35M UNet), large (140M, LoRA)
    pytest benchmarks/ --benchmark-disable         # smoke: the tiny pipeline, two rows

Each row runs in its own subprocess (one thread, SiD with SiD-LSG's guidance, batch 4 tiny / 2 mid)
and reports the process's peak resident memory (``ru_maxrss``: Python, torch, the pipeline, the
three networks, the optimisers) while training, how much writing a checkpoint then raises it, the peak the torch profiler sees during one training iteration
(allocations above what was held before it: activations, gradients, optimiser temporaries), the
parameters that train, and the time of one iteration. With a GPU the rows run on CUDA too, where
the step peak is ``max_memory_allocated`` above what was allocated before. The prompt embeddings are cached and the
text encoders released in every row (the engine always does both).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
ROWS = {  # name -> config overrides
    "full fine-tuning": {"teacher.dtype": "fp32"},
    "full, bf16 teacher": {"teacher.dtype": "bf16"},
    "full, checkpointing": {"teacher.dtype": "fp32", "activation_checkpointing": True},
    "LoRA rank 8, untied": {"teacher.dtype": "fp32", "lora.rank": 8, "lora.share_base": False},
    "LoRA rank 8": {"teacher.dtype": "fp32", "lora.rank": 8},
    "LoRA 8, checkpointing, bf16 teacher": {"lora.rank": 8, "activation_checkpointing": True, "teacher.dtype": "bf16"},
}
SMOKE_ROWS = ("full fine-tuning", "LoRA rank 8, untied", "LoRA rank 8")
SIZES = {"tiny": dict(sample_size=8, batch=4), "mid": dict(sample_size=32, batch=2),
         "large": dict(sample_size=16, batch=2)}  # large: the LoRA rows only (what the shared base saves)
RESULTS: list[dict] = []

SCRIPT = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, sys.argv[5])
from iteration_loops import peak_memory
from fastdistill.engine import DistillConfig
from fastdistill.engine.loop import Distiller
folder, prompts, out, over, device = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[6]
torch.set_num_threads(1)
items = {"teacher.kind": "checkpoint", "teacher.path": folder, "prompts": prompts, "out_dir": out, "device": device,
         "method.guidance_teacher": 1.5, "method.guidance_fake": 1.5, "method.guidance_fake_train": 1.5,
         "progress": False, "eval_data": "none", "steps": 3, **over}
d = Distiller(DistillConfig().with_overrides([f"{k}={v}" for k, v in items.items()]))
d.train_step()
t0 = time.perf_counter()
d.train_step()
step_s = time.perf_counter() - t0
step_peak = peak_memory(d.train_step, device)
trained = sum(p.numel() for p in d.trainable["generator"]) + sum(p.numel() for p in d.trainable["fake"])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
d.save()  # a checkpoint: how far its write lifts the peak above training's
print(json.dumps({"rss_mb": rss, "write_rise_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss,
                  "step_peak_mb": step_peak / 2**20, "trained_m": trained / 1e6, "step_s": step_s,
                  "unet_m": sum(p.numel() for p in d.teacher.unet.parameters()) / 1e6}))
"""


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    sys.path.insert(0, str(REPO))
    from tests.tiny_pipelines import make_sd_pipeline

    root = tmp_path_factory.mktemp("t2i-memory")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na dog\nthe digit seven\na handwritten three\n")
    made = {}

    def get(size):
        if size not in made:
            made[size] = make_sd_pipeline(root / size, size=size, sample_size=SIZES[size]["sample_size"])
        return made[size], prompts

    return get


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("device", DEVICES)
def test_t2i_memory(benchmark, pipelines, tmp_path, device, size, row):
    if benchmark.disabled and (size != "tiny" or row not in SMOKE_ROWS):
        pytest.skip("smoke run: the tiny pipeline's first rows only")
    if size == "large" and not row.startswith("LoRA rank 8"):
        pytest.skip("the large pipeline measures the LoRA base, shared against untied")
    folder, prompts = pipelines(size)
    over = {"batch_size": SIZES[size]["batch"], **ROWS[row]}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-c", SCRIPT, str(folder), str(prompts), str(tmp_path / "run"), json.dumps(over),
            str(Path(__file__).parent), device]
    proc = benchmark.pedantic(subprocess.run, args=(argv,), rounds=1, iterations=1,  # times the whole measured run
                              kwargs=dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=900))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rec["rss_mb"] > 0 and rec["step_peak_mb"] > 0
    RESULTS.append({"device": device, "size": size, "row": row, **rec})
    benchmark.extra_info.update(rec)


def summary_lines() -> list[str]:
    if not RESULTS:
        return []
    lines = [f"{'dev':4} {'pipeline':8} {'UNet M':>7} {'row':36} {'trained M':>10} {'peak RSS MB':>12} "
             f"{'write +MB':>10} {'step peak MB':>13} {'step s':>7}"]
    for r in RESULTS:
        lines.append(f"{r['device']:4} {r['size']:8} {r['unet_m']:7.2f} {r['row']:36} {r['trained_m']:10.3f} {r['rss_mb']:12.0f} "
                     f"{r['write_rise_mb']:10.0f} {r['step_peak_mb']:13.1f} {r['step_s']:7.2f}")
    return lines
