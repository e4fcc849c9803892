"""Shared machinery of the benchmarks: options, the per-session results tables, the summaries.

Every benchmark records its median time (and a few facts) in `RESULTS`; at the end of the
session `pytest_terminal_summary` prints, per (op, batch, shape), the fused backend against the
eager reference, against `torch.compile` of the reference, and its achieved bandwidth as a
fraction of a same-size `copy_` timed in the same session (docs/performance.md).
"""
from __future__ import annotations

import pytest
import torch

# (kind, key) -> dict: kind "copy" keyed by (device, batch, shape); kind "loss" keyed by
# (op, device, batch, shape, provider).
RESULTS: dict = {"copy": {}, "loss": {}}


def pytest_addoption(parser):
    group = parser.getgroup("fastdistill benchmarks")
    group.addoption("--fd-threads", type=int, default=None, help="torch.set_num_threads for the CPU benchmarks (default: torch's)")
    group.addoption("--fd-iters", default=None, metavar="WARM,TIMED",
                    help="iteration benchmark: warm-up and timed iterations of every row (default: per architecture)")
    group.addoption(
        "--fd-compile-all",
        action="store_true",
        default=False,
        help="with --benchmark-disable, still compile the reference for every shape (default: smallest shape only)",
    )


def pytest_configure(config):
    threads = config.getoption("--fd-threads")
    if threads:
        torch.set_num_threads(threads)
    # One compiled graph per (op, shape) with dynamic=False: more than dynamo's default
    # recompile limit for one function.
    import torch._dynamo as dynamo  # a plain `import torch._dynamo` here would shadow the global torch

    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))


def pytest_collection_modifyitems(session, config, items):
    """Run each case's copy, eager, compiled and fused benchmarks back to back, so the ratios
    compare timings taken close together on a shared, noisy machine."""
    providers = ("eager", "compiled", "cpp", "cuda", "triton")
    ops = ("sid", "sim", "dmd", "dsm")

    def key(item):
        params = getattr(getattr(item, "callspec", None), "params", None)
        if not params or "batch" not in params:
            return (1, "", 0, (), 0, 0)
        is_loss = "op" in params
        return (
            0,
            params["device"],
            params["batch"],
            tuple(params["shape"]),
            ops.index(params["op"]) + 1 if is_loss else 0,
            providers.index(params["provider"]) if is_loss else -1,
        )

    bench = [i for i in items if i.fspath.basename == "test_loss_benchmarks.py"]
    if bench:
        others = [i for i in items if i.fspath.basename != "test_loss_benchmarks.py"]
        items[:] = others + sorted(bench, key=key)


@pytest.fixture(scope="session")
def results():
    return RESULTS


def _fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:8.3f}"


def _fmt_ratio(x):
    return "-" if x is None else f"{x:6.2f}x"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _loss_summary(terminalreporter)
    import sys

    for module, title in (("test_iteration_benchmark", "iteration benchmark: images/s of one full iteration (one session)"),
                          ("test_t2i_memory", "text-to-image memory: one subprocess a row, 1 thread")):
        mod = sys.modules.get(module)
        lines = mod.summary_lines() if mod is not None else []
        if lines:
            terminalreporter.section(f"fastdistill {title}")
            for line in lines:
                terminalreporter.write_line(line)


def _loss_summary(terminalreporter):
    losses = RESULTS["loss"]
    if not losses:
        return
    timed = any(r.get("time") is not None for r in losses.values())
    tr = terminalreporter
    tr.section("fastdistill loss benchmarks: fused vs reference (median fwd+bwd times, one session)")
    if not timed:
        tr.write_line("timings disabled (--benchmark-disable): every benchmark ran once as a smoke test.")
        return
    tr.write_line(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; copy = same-size copy_ of one tensor")
    header = (
        f"{'op':4} {'dev':4} {'B':>4} {'shape':9} {'fused':6} {'eager ms':>9} {'compiled':>9} {'fused ms':>9}"
        f" {'vs eager':>9} {'vs comp':>8} {'GB/s':>7} {'of copy':>8} {'mem/eager':>9}"
    )
    tr.write_line(header)
    tr.write_line("-" * len(header))
    keys = sorted({k[:4] for k in losses})
    for op, dev, batch, shape in keys:
        eager = losses.get((op, dev, batch, shape, "eager"), {})
        comp = losses.get((op, dev, batch, shape, "compiled"), {})
        for provider in ("cpp", "cuda", "triton"):
            fused = losses.get((op, dev, batch, shape, provider))
            if not fused or fused.get("time") is None:
                continue
            t = fused["time"]
            vs_eager = eager["time"] / t if eager.get("time") else None
            vs_comp = comp["time"] / t if comp.get("time") else None
            gbs = fused["bytes"] / t / 1e9
            copy = RESULTS["copy"].get((dev, batch, shape))
            of_copy = gbs / copy["gbs"] if copy else None
            mem = None
            if fused.get("peak_bytes") is not None and eager.get("peak_bytes"):
                mem = fused["peak_bytes"] / eager["peak_bytes"]
            tr.write_line(
                f"{op:4} {dev:4} {batch:4d} {shape:9} {provider:6} {_fmt_ms(eager.get('time')):>9} {_fmt_ms(comp.get('time')):>9}"
                f" {_fmt_ms(t):>9} {_fmt_ratio(vs_eager):>9} {_fmt_ratio(vs_comp):>8} {gbs:7.1f}"
                f" {'-' if of_copy is None else f'{of_copy:7.0%}':>8} {'-' if mem is None else f'{mem:8.2f}':>9}"
            )
    copies = RESULTS["copy"]
    if copies:
        tr.write_line("copy_ bandwidth: " + ", ".join(f"{d} B={b} {s}: {c['gbs']:.1f} GB/s" for (d, b, s), c in sorted(copies.items())))
