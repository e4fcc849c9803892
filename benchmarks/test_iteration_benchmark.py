"""Images/s of one full distillation iteration (fake step + generator step + EMA), per architecture
and method: the authors'-style eager loop (fp32) against the engine's configurations, in one run.

    pytest benchmarks/test_iteration_benchmark.py                    # timed; the table prints at the end
    pytest benchmarks/test_iteration_benchmark.py -k "ddpmpp and sid"  # one architecture / method
    pytest benchmarks/test_iteration_benchmark.py -k "not compiled" --fd-iters 1,3   # shorter
    pytest benchmarks/ --benchmark-disable                             # smoke: small architectures, once each

Each engine row is timed alternately with a fresh eager loop of its own, iteration by
iteration, and "vs eager" is that ratio: the machine's drift between rows (minutes apart) does
not enter it. Every row also reports the iteration's matmul/conv FLOPs
(``torch.utils.flop_counter``), the achieved FLOP/s as a fraction of a same-run dense
matmul/conv of the row's dtype (model FLOP utilisation), its peak memory, and its profiled time
in matmul/conv kernels: the eager row's share of that, sped up by the ratio of the eager and
engine-bf16 matmul/conv times, bounds by Amdahl's law what bf16 can give when nothing else gets
faster (printed under each architecture and method). On CPU every row runs on one thread.
Loops and measurements: ``iteration_loops.py``.
"""
from __future__ import annotations

import pytest
import torch

import iteration_loops as L
from fastdistill.engine.throughput import count_flops, dense_yardstick, time_steps

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RESULTS: dict = {"yardstick": {}, "rows": {}}

# (row name, engine overrides); "eager" is the authors'-style loop. Each engine option has its
# own row: its value is the difference to the row above it.
COMMON_ROWS = [
    ("eager", None),
    ("engine fp32", []),
    ("engine bf16", ["precision=bf16"]),
    ("engine bf16 channels_last", ["precision=bf16", "channels_last=true"]),
]
METHOD_ROWS = {  # sample reuse: SiD's option (not its recipe); DMD's default (DMD2's recipe)
    "sid": [("engine bf16 reuse samples", ["precision=bf16", "method.reuse_samples=true"])],
    "dmd": [("engine bf16 fresh samples", ["precision=bf16", "method.reuse_samples=false"])],
}
# Compiled rows use the precision that is faster uncompiled: bf16 on CUDA, fp32 for the small
# networks on CPU (too small for bf16 to pay there).
PRECISION = "bf16" if DEVICE == "cuda" else "fp32"
COMPILED_ROWS = [
    (f"engine {PRECISION} compiled regional", [f"precision={PRECISION}", "compile=true", "compile_scope=regional"]),
    (f"engine {PRECISION} compiled full", [f"precision={PRECISION}", "compile=true", "compile_scope=full"]),
]
# Compiling takes minutes on CPU (about 2 for the digits step, 8 and more for DDPM++, which then
# runs no faster there): compiled rows run for SiD on the small networks on CPU, everywhere on CUDA.
COMPILED_CASES = {"cpu": {("digits", "sid"), ("tiny", "sid")}}
ITERS = {"ddpmpp": (1, 3), "sdunet": (1, 3), "digits": (3, 10), "tiny": (3, 10)}  # (warm-up, timed) iterations


def rows_of(arch: str, method: str) -> list:
    compiled = COMPILED_ROWS if DEVICE == "cuda" or (arch, method) in COMPILED_CASES["cpu"] else []
    return COMMON_ROWS + METHOD_ROWS[method] + compiled


SMOKE_ARCHS = ("tiny", "digits")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread on CPU: docs/performance.md's set-up, and stable numbers on 2 cores."""
    n = torch.get_num_threads()
    if DEVICE == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.benchmark(group="iteration-yardstick")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dense_yardstick(benchmark, dtype):
    """The peak the MFU column divides by; pytest-benchmark times the measurement itself."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    y = benchmark.pedantic(dense_yardstick, args=(DEVICE, dt), rounds=1, iterations=1,
                           kwargs={"repeats": 1 if benchmark.disabled else 3, "smoke": benchmark.disabled})
    RESULTS["yardstick"][dtype] = y
    benchmark.extra_info.update({k: v / 1e9 for k, v in y.items()})


CASES = [(arch, method, row) for arch in L.ARCHS for method in ("sid", "dmd") for row, _ in rows_of(arch, method)]


@pytest.mark.benchmark(group="iteration")
@pytest.mark.parametrize("arch,method,row", CASES, ids=[f"{a}-{m}-{r.replace(' ', '_')}" for a, m, r in CASES])
def test_iteration(benchmark, request, tmp_path, monkeypatch, arch, method, row):
    a = L.ARCHS[arch]
    if benchmark.disabled and arch not in SMOKE_ARCHS:
        pytest.skip(f"{arch}: timed runs only (seconds per iteration on CPU); the smoke run covers {SMOKE_ARCHS}")
    options = dict(rows_of(arch, method))[row]
    if benchmark.disabled and options and "compile=true" in options:
        pytest.skip("compiled rows: timed runs only (compilation takes minutes)")
    batch = a.batch["cuda" if DEVICE == "cuda" else "cpu"]
    teacher = a.build()
    if options is not None and "compile=true" in options and not benchmark.disabled:
        torch._dynamo.reset()
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    if options is None:
        loop = L.eager_loop(teacher, method, batch, torch.device(DEVICE))
        step = loop.step
    else:
        d = L.engine(teacher, method, batch, DEVICE, tmp_path, options)
        step = d.train_step
    warm, timed = ITERS[arch]
    if request.config.getoption("--fd-iters"):
        warm, timed = (int(v) for v in request.config.getoption("--fd-iters").split(","))
    compiled = options is not None and "compile=true" in options
    key = (arch, method)
    if benchmark.disabled:
        benchmark(step)
        return
    flops = compile_s = None
    if compiled:  # the first call compiles: timed on a cold cache (a fresh inductor cache, dynamo reset)
        compile_s = time_steps(step, DEVICE, 1)[0]
        warm += 1
    else:
        flops, _ = count_flops(step)
        warm -= 1
    for _ in range(max(warm, 0)):
        step()
    ref_times = None
    if options is None:
        times = time_steps(step, DEVICE, timed)
    else:  # timed alternately with a fresh eager loop: the ratio is immune to the machine's drift between rows
        ref = L.eager_loop(a.build(), method, batch, torch.device(DEVICE))
        ref.step()
        times, ref_times = [], []
        for _ in range(timed):
            times += time_steps(step, DEVICE, 1)
            ref_times += time_steps(ref.step, DEVICE, 1)
        del ref
    benchmark.pedantic(step, rounds=1, iterations=1)
    if compile_s is not None:
        compile_s -= L.median(times)  # the first call's time beyond one iteration
    rec = dict(time=L.median(times), times=times, batch=batch, flops=flops, compile_s=compile_s,
               eager_time=L.median(ref_times) if ref_times else None,
               dtype="bf16" if options and "precision=bf16" in options else "fp32",
               peak_bytes=L.peak_memory(step, DEVICE), params=L.parameters(teacher))
    rec["dense_s"], rec["profiled_s"] = L.dense_time(step, DEVICE)
    RESULTS["rows"].setdefault(key, {})[row] = rec
    flops = flops if flops is not None else _uncompiled_flops(RESULTS["rows"][key], row)
    peak = RESULTS["yardstick"].get(rec["dtype"], {}).get("peak")
    benchmark.extra_info.update(images_per_s=batch / rec["time"], batch=batch, arch=arch, method=method, row=row,
                                flops=flops, peak_bytes=rec["peak_bytes"], compile_s=compile_s, dtype=rec["dtype"],
                                yardstick_flops_per_s=peak,
                                mfu=(flops / rec["time"] / peak) if flops and peak else None,
                                speedup_vs_eager=_vs_eager(rec))


def summary_lines() -> list[str]:
    """The table of the timed rows (called from conftest's terminal summary)."""
    rows, yard = RESULTS["rows"], RESULTS["yardstick"]
    if not rows:
        return []
    where = "CPU, one thread" if DEVICE == "cpu" else torch.cuda.get_device_name()
    lines = [f"torch {torch.__version__}, {where}; yardstick (dense matmul / 3x3 conv, GFLOP/s): "
             + ", ".join(f"{k} {v['matmul'] / 1e9:.0f} / {v['conv'] / 1e9:.0f}" for k, v in yard.items())]
    header = f"{'arch':7} {'method':6} {'row':30} {'img/s':>8} {'vs eager':>8} {'GFLOP/img':>9} {'GFLOP/s':>8} {'MFU':>5} {'peak MB':>8} {'compile s':>9}"
    lines += [header, "-" * len(header)]
    for (arch, method), by_row in rows.items():
        eager = by_row.get("eager")
        for name, r in by_row.items():
            flops = r["flops"] if r["flops"] is not None else _uncompiled_flops(by_row, name)
            ips = r["batch"] / r["time"]
            fps = flops / r["time"] if flops else None
            peak = yard.get(r["dtype"], {}).get("peak")
            mfu = f"{fps / peak:5.0%}" if fps and peak else "    -"
            vs = f"{_vs_eager(r):7.2f}x"
            lines.append(f"{arch:7} {method:6} {name:30} {ips:8.2f} {vs:>8} {(flops or 0) / r['batch'] / 1e9:9.1f} "
                         f"{(fps or 0) / 1e9:8.1f} {mfu} {r['peak_bytes'] / 2**20:8.0f} "
                         f"{'-' if r['compile_s'] is None else format(r['compile_s'], '.0f'):>9}")
        bf16 = by_row.get("engine bf16")
        if eager and bf16:
            s = eager["dense_s"] / eager["profiled_s"]
            r_dense = eager["dense_s"] / bf16["dense_s"]
            bound = L.amdahl(s, r_dense)
            got = _vs_eager(bf16)
            lines.append(f"{'':15}Amdahl: eager spends {s:.0%} of its profiled time in matmul/conv, which run "
                         f"{r_dense:.2f}x faster in the engine's bf16: {bound:.2f}x if nothing else sped up; "
                         f"engine bf16 {got:.2f}x ({got / bound:.0%} of that)")
    return lines


def _vs_eager(rec: dict):
    """Images/s over the eager loop's, both timed alternately in the row's own test (1 for the eager row)."""
    return rec["eager_time"] / rec["time"] if rec["eager_time"] else 1.0


def _uncompiled_flops(by_row: dict, name: str):
    """A compiled row does the work of the same row uncompiled (FlopCounterMode counts eager ops)."""
    base = by_row.get(name.split(" compiled")[0])
    return base["flops"] if base else None
