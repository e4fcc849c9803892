"""The GPU check: everything a CUDA machine can tell about fastdistill, in one command of at most 4.5 minutes (a rerun: 3).

    scripts/gpu_check.sh OUT_DIR                # on an H100/H200 (one GPU, no network)
    scripts/gpu_check.sh --dry OUT_DIR          # anywhere: what it would run, and the cheap parts

Steps, in order (each has a time limit, its share of --budget; together they fit it, 270 s by default):

1. build                the `_C` extension against the installed torch, CUDA kernels for the local GPU only
2. imports              every fastdistill module imports with the optional packages hidden; `fastdistill doctor`
3. gpu-tests            the tests marked `gpu` (CUDA and Triton kernels, opcheck, inductor on CUDA), with
                        missing backends failing instead of skipping
4. loss-benchmarks      fused vs eager vs torch.compile'd losses on CUDA, and a same-size copy_ yardstick
5. iteration-benchmark  one DDPM++ distillation iteration: the eager loop against the engine in bf16
6. sid-digits           SiD on the shipped digits teacher for what is left of the budget (at most 2 minutes),
                        stopped like Ctrl-C; its last FID from metrics.jsonl

Steps 3-6 need the build and are skipped with that reason when it fails; every failure is recorded
and the next step runs. A rerun on the same machine reuses the build when the sources, torch and the
GPU architecture are unchanged (a stamp in build/gpu_check/ records them), so it fits 3 minutes. Without a CUDA device (or with --dry) nothing GPU-bound runs: each step says
what it would run and why it did not, and checks what it can here (setup.py runs with the build's
settings, the imports, the GPU tests collect and skip, the benchmarks collect, the SiD settings
validate), with CUDA hidden from the child processes; that takes well under a minute.

Writes three files, so that the few a lent machine sends back carry it all: OUT_DIR/summary.txt
(PASS/FAIL per step, one line each, with its figures), OUT_DIR/results.json (everything parsed) and
OUT_DIR/details.tar.gz (summary.md, every step's full output, the benchmarks' JSON, the SiD run's
metrics and config).
Exit status 1 when a step failed (after the summaries are written), 2 for a bad command line.
Standard library only: it must run wherever the package's own dependencies do.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO / "build" / "gpu_check"  # kept between checks on one machine: a rerun reuses the build
BUILD_STAMP = BUILD_DIR / "stamp.json"
SUMMARY, RESULTS, DETAILS = "summary.txt", "results.json", "details.tar.gz"  # all a check leaves in OUT_DIR
BUDGET_S = 270
FINISH_S = 5  # kept free at the end of the budget for the summaries
GRACE_S = 10  # a step's time limit includes this: SIGINT that long before it (pytest prints its summary,
#               a distillation run checkpoints), SIGKILL at it
PROBE_LIMIT_S, DRY_LIMIT_S = 60, 60
# GPU-mode time limits per step as shares of the budget (grace included); the SiD run gets the rest,
# at least SID_MIN_S and at most SID_MAX_S of training: the shares leave room for that and the summaries
SHARES = {"build": 0.24, "imports": 0.07, "gpu-tests": 0.29, "loss-benchmarks": 0.08, "iteration-benchmark": 0.12}
SID_MAX_S, SID_MIN_S = 120, 30
#: the shortest --budget whose shares still leave the SiD run its minimum and the summaries their time
MIN_BUDGET_S = int((SID_MIN_S + GRACE_S + FINISH_S) / (1 - sum(SHARES.values()))) + 1
# Packages fastdistill must import without (import-time optional); they are hidden in the imports step.
OPTIONAL = ("torch_fidelity", "nvtx", "expecttest", "matplotlib", "tensorboard", "diffusers", "transformers",
            "wandb", "torchvision")
# Selections: one batch and shape of the loss benchmarks (SiD: 3 gradients, DMD: 1), and the DDPM++
# rows without torch.compile (compiling DDPM++ takes minutes), plus the dense yardstick for the MFU column.
LOSS_K = "cuda and 256 and 3x64x64 and (copy or sid or dmd)"
ITERATION_K = "yardstick or (ddpmpp and (eager or bf16) and not compiled)"
SID_OVERRIDES = ["steps=1000000", "eval_every=250", "log_every=50", "resume=none", "log.mfu=true"]
STEPS = ("build", "imports", "gpu-tests", "loss-benchmarks", "iteration-benchmark", "sid-digits")
NEEDS_BUILD = {"gpu-tests", "loss-benchmarks", "iteration-benchmark", "sid-digits"}
NO_CUDA = "skipped (no CUDA)"

_PROBE = f"""
import importlib.util, json, os, platform, shutil, subprocess, sys
info = {{"python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count()}}
import torch
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
if info["cuda_available"]:
    info["gpus"] = [{{"name": torch.cuda.get_device_name(i),
                     "capability": "%d.%d" % torch.cuda.get_device_capability(i),
                     "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}}
                    for i in range(torch.cuda.device_count())]
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:
    info["triton"] = f"not importable ({{exc}})"
from torch.utils.cpp_extension import CUDA_HOME  # what the build uses: $CUDA_HOME, nvcc on PATH, /usr/local/cuda
nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
info["cuda_home"] = CUDA_HOME
info["nvcc"] = None
if nvcc and os.path.exists(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    info["nvcc"] = next((line for line in out.splitlines() if "release" in line), nvcc)
info["ninja"] = shutil.which("ninja") is not None
info["packages"] = {{m: importlib.util.find_spec(m) is not None for m in {OPTIONAL!r}}}
print("PROBE " + json.dumps(info))
"""

_HIDE = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # `import name` fails, find_spec says None: as if it were not installed
"""

_IMPORTS = _HIDE + f"""
import json, pkgutil, traceback
import fastdistill
failed = {{}}
names = ["fastdistill"] + [m.name for m in pkgutil.walk_packages(fastdistill.__path__, "fastdistill.")]
for name in names:
    try:
        __import__(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
from fastdistill.ops import registry
print("IMPORTS " + json.dumps({{"modules": len(names), "failed": sorted(failed), "hidden": {list(OPTIONAL)!r},
      "extension": registry.EXTENSION_REASON, "cpu_kernels": registry.extension_has_kernel("CPU"),
      "cuda_kernels": registry.extension_has_kernel("CUDA")}}))
for name, tb in failed.items():
    print(f"--- {{name}}\\n{{tb}}", file=sys.stderr)
if failed:
    sys.exit(1)
from fastdistill.cli import main
sys.exit(main(["doctor"]))
"""

_VERIFY_BUILD = """
import json, sys
from fastdistill.ops import registry
cuda = registry.extension_has_kernel("CUDA")
print("BUILD " + json.dumps({"extension": registry.EXTENSION_REASON, "cpu_kernels": registry.extension_has_kernel("CPU"),
                             "cuda_kernels": cuda}))
if not cuda:
    sys.exit("fastdistill._C has no CUDA kernels" + ("" if registry.EXTENSION_AVAILABLE else ": " + registry.EXTENSION_REASON))
"""


@dataclass
class Step:
    """One step's record in results.json."""

    name: str
    status: str = "skipped"  # pass | fail | skipped | skipped (no CUDA)
    reason: str = ""  # why it failed or was skipped
    command: str = ""  # what GPU mode runs
    checked: str = ""  # dry mode: what ran instead
    seconds: float = 0.0
    limit_s: Optional[float] = None
    results: dict = field(default_factory=dict)
    log: str = ""


@dataclass
class Run:
    """One process's outcome."""

    rc: Optional[int]
    seconds: float
    timed_out: bool
    output: str


def planned_limits(budget: float) -> dict[str, float]:
    """Each step's limit at the start of a check of ``budget`` seconds, grace included; the SiD run's
    is its minimum (it gets what the others leave)."""
    limits = {name: share * budget for name, share in SHARES.items()}
    limits["sid-digits"] = SID_MIN_S + GRACE_S
    return limits


class Check:
    """The state of one gpu_check invocation: where things go (``out``: the working folder whose
    contents end in the tarball), the environment, the deadline."""

    def __init__(self, out: Path, dry_reason: Optional[str], t0: float, budget: float, probe: dict):
        self.out, self.dry_reason, self.probe, self.t0 = out, dry_reason, probe, t0
        self.logs = out / "logs"
        self.budget = budget
        self.deadline = t0 + budget - FINISH_S
        self.python = sys.executable

    @property
    def dry(self) -> bool:
        return self.dry_reason is not None

    def env(self, **extra: str) -> dict:
        """The children's environment: the repository first on sys.path; in dry mode CUDA hidden,
        in GPU mode no Triton interpreter (it would put the Triton kernels on CPU tensors)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env.pop("TRITON_INTERPRET", None)
        env.update(extra)
        return env

    def limit(self, name: str) -> float:
        """A step's time limit, grace period included. GPU mode: its share of the budget, cut so the
        SiD run keeps its minimum; the SiD run: the rest, at most SID_MAX_S of training."""
        if self.dry:
            return DRY_LIMIT_S
        left = self.deadline - time.monotonic()
        if name == "sid-digits":
            return min(SID_MAX_S + GRACE_S, left)
        return max(GRACE_S + 1.0, min(planned_limits(self.budget)[name], left - SID_MIN_S - GRACE_S))

    def run(self, step: Step, argv: list[str], env: dict) -> Run:
        """Run `argv` in the repository within what is left of the step's time limit, its output
        appended to the step's log; SIGINT GRACE_S before the limit, SIGKILL at it."""
        log = self.logs / f"{step.name}.log"
        step.log = str(log.relative_to(self.out))
        timeout = max(step.limit_s - step.seconds - GRACE_S, 1.0)
        start = time.monotonic()
        with open(log, "a") as f:
            f.write(f"$ {_display(argv)}\n")
            f.flush()
            offset = f.tell()
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal_group(proc, signal.SIGINT)
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
            seconds = time.monotonic() - start
            f.write(f"\n[exit status {proc.returncode} after {seconds:.1f} s{', stopped at the time limit' if timed_out else ''}]\n\n")
        step.seconds += seconds
        with open(log, errors="replace") as f:
            f.seek(offset)
            output = f.read()
        return Run(proc.returncode, seconds, timed_out, output)


def _display(argv: list[str]) -> str:
    """A command line for people: an inline `-c` program shown by its first line."""
    shown = [a if "\n" not in a else "<" + a.strip().splitlines()[0] + " ...>" for a in argv]
    return shlex.join(shown)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tagged_json(text: str, tag: str) -> dict:
    """The JSON a child printed after `tag` (the last such line), else {}."""
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return {}


def _failure(run: Run, what: str) -> str:
    if run.timed_out:
        return f"{what} stopped at its time limit ({run.seconds:.0f} s)"
    return f"{what} exited with status {run.rc}: {_last_line(run.output)}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("[exit status")]
    return lines[-1][:300] if lines else "(no output)"


# ----------------------------------------------------------------------------- pytest output
_OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")
_COLLECTED = re.compile(r"(?:(\d+)/)?(\d+) tests? collected")


def pytest_counts(text: str) -> dict:
    """Counts from pytest's last summary line ("3 passed, 2 skipped in 1.2s", "93/997 tests collected
    (904 deselected) in 4.8s", "no tests ran"); {} when there is none."""
    for line in reversed(text.splitlines()):
        if not re.search(r"\bin \d+(\.\d+)?s\b", line):
            continue
        counts = {("errors" if kind.startswith("error") else kind): int(n) for n, kind in _OUTCOME.findall(line)}
        collected = _COLLECTED.search(line)
        if collected:
            counts["collected"] = int(collected.group(1) or collected.group(2))
        if counts or "no tests ran" in line:
            return counts
    return {}


def pytest_outcomes(text: str) -> dict:
    """Failed / errored test ids and the skip reasons of the short test summary (-rfEs)."""
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    skips = [m.group(1).strip() for m in re.finditer(r"^SKIPPED \[\d+\] (.*)$", text, re.M)]
    return {"failed_tests": failed, "skip_reasons": sorted(set(re.sub(r"^\S+:\d+: ", "", s) for s in skips))}


def summary_section(text: str, title: str) -> str:
    """The lines of the terminal-summary section whose header contains `title`, up to the next
    header or blank line (pytest-benchmark's own tables follow it)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("=") and title in line:
            body = []
            for nxt in lines[i + 1:]:
                if not nxt.strip() or nxt.startswith("=" * 5):
                    break
                body.append(nxt)
            return "\n".join(body)
    return ""


# ----------------------------------------------------------------------------- benchmark results
def _shape_id(shape) -> str:
    return "x".join(map(str, shape))


def loss_benchmark_rows(data: dict) -> list[dict]:
    """Per fused backend and case: median time and its ratios to the eager and compiled reference,
    bandwidth and its fraction of the same-size copy_, peak memory relative to eager."""
    cases: dict = {}
    for b in data.get("benchmarks", []):
        p = b.get("params") or {}
        if "op" in p:
            key = (p["op"], p["device"], p["batch"], _shape_id(p["shape"]))
            cases.setdefault(key, {})[p["provider"]] = b
    rows = []
    for (op, device, batch, shape), by in sorted(cases.items()):
        eager, compiled = (by.get(k, {}).get("stats", {}).get("median") for k in ("eager", "compiled"))
        for provider in ("cuda", "triton", "cpp"):
            if provider not in by:
                continue
            t, info = by[provider]["stats"]["median"], by[provider].get("extra_info", {})
            rows.append({"op": op, "device": device, "batch": batch, "shape": shape, "provider": provider,
                         "median_ms": t * 1e3, "vs_eager": eager / t if eager else None,
                         "vs_compiled": compiled / t if compiled else None, "GB/s": info.get("GB/s"),
                         "fraction_of_copy_bw": info.get("fraction_of_copy_bw"), "peak_vs_eager": info.get("peak_vs_eager")})
    return rows


def iteration_benchmark_rows(data: dict) -> list[dict]:
    """Per (architecture, method, row): images/s, speed-up over the eager loop, peak memory."""
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if "images_per_s" in info:
            peak = info.get("peak_bytes")
            rows.append({"arch": info.get("arch"), "method": info.get("method"), "row": info.get("row"),
                         "images_per_s": info["images_per_s"], "speedup_vs_eager": info.get("speedup_vs_eager"),
                         "peak_mib": peak / 2**20 if peak is not None else None})
    return rows


def sid_results(output: str, metrics_jsonl: Path) -> dict:
    """A distillation run's steps (its closing "distilled N steps" line, else the last logged step),
    and from its metrics.jsonl the median images/s and MFU and the last FID with the baselines."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()] if metrics_jsonl.is_file() else []
    done = re.findall(r"^distilled (\d+) steps", output, re.M)
    out: dict = {"steps": int(done[-1]) if done else max((r.get("step", 0) for r in rows), default=0)}
    for key in ("img_per_s", "mfu"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        values = sorted(values[1:] or values)  # the first interval holds the warm-up
        if values:
            out[f"{key}_median"] = values[len(values) // 2]
    for r in rows:
        for k in ("fid_initial", "fid_data_vs_data", "fid_teacher_heun35"):
            if k in r:
                out[k] = r[k]
    evals = [r for r in rows if "fid_student" in r]
    if evals:
        out["fid"], out["fid_step"] = evals[-1]["fid_student"], evals[-1]["step"]
    return out


# ----------------------------------------------------------------------------- the steps
# Every step records the command GPU mode runs; those that need the build return right after
# when `skip` (the reason: the build failed) is given.
def _env_prefix(env: dict) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "


def build(c: Check, step: Step, skip: Optional[str]) -> None:
    arch = ";".join(sorted({g["capability"] for g in c.probe.get("gpus", [])})) or "9.0"
    env = {"FASTDISTILL_FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(c.probe.get("cpus") or 4)}
    def argv(temp: str) -> list[str]:
        return [c.python, "setup.py", "build_ext", "--inplace", "--build-temp", f"{temp}/temp", "--build-lib", f"{temp}/lib"]

    step.command = _env_prefix(env) + shlex.join(argv(os.path.relpath(BUILD_DIR, REPO)))
    step.results = {"arch_list": arch, "ninja": c.probe.get("ninja"), "nvcc": c.probe.get("nvcc")}
    if c.dry:
        if not c.probe.get("nvcc"):  # CUDAExtension needs a toolkit even to be declared
            env.pop("FASTDISTILL_FORCE_CUDA")
            step.reason = "no CUDA toolkit found either, so setup.py was checked without FASTDISTILL_FORCE_CUDA; "
        check = [c.python, "setup.py", "build_ext", "--help"]
        step.checked = _env_prefix(env) + shlex.join(check)
        run = c.run(step, check, c.env(**env))
        step.results["built_extension_present"] = any((REPO / "fastdistill").glob("_C*.so"))
        if run.rc != 0:
            step.status, step.reason = "fail", _failure(run, "setup.py with the build's settings")
        else:
            step.status = NO_CUDA
            step.reason += (f"{c.dry_reason}: setup.py runs with the build's settings "
                            f"(TORCH_CUDA_ARCH_LIST={arch} stands in for the GPU's)")
        return
    stamp = build_stamp(c.probe, arch)
    if _read_stamp() == stamp:  # a rerun on this machine: the same sources, torch and architecture
        verify = c.run(step, [c.python, "-c", _VERIFY_BUILD], c.env())
        if verify.rc == 0:
            step.results.update(_tagged_json(verify.output, "BUILD"), reused=True)
            step.status, step.reason = "pass", f"reused the build of {stamp['sources'][:12]} (unchanged sources)"
            return
    BUILD_STAMP.unlink(missing_ok=True)
    shutil.rmtree(BUILD_DIR, ignore_errors=True)  # not objects of another torch or architecture
    BUILD_DIR.mkdir(parents=True)
    run = c.run(step, argv(str(BUILD_DIR)), c.env(**env))
    if run.rc != 0:
        step.status, step.reason = "fail", _failure(run, "the build")
        return
    verify = c.run(step, [c.python, "-c", _VERIFY_BUILD], c.env())
    step.results.update(_tagged_json(verify.output, "BUILD"), reused=False)
    if verify.rc != 0:
        step.status, step.reason = "fail", _failure(verify, "loading the built extension")
    else:
        step.status = "pass"
        BUILD_STAMP.write_text(json.dumps(stamp) + "\n")


def build_stamp(probe: dict, arch: str) -> dict:
    """What a build depends on: the extension's sources and setup.py, torch, CUDA, the architectures."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "csrc").rglob("*")) + [REPO / "setup.py"]:
        if path.is_file():
            digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"sources": digest.hexdigest(), "torch": probe.get("torch"), "torch_cuda": probe.get("torch_cuda"),
            "arch_list": arch}


def _read_stamp() -> Optional[dict]:
    try:
        return json.loads(BUILD_STAMP.read_text())
    except (OSError, ValueError):
        return None


def imports(c: Check, step: Step, skip: Optional[str]) -> None:
    step.command = (f"{shlex.quote(c.python)} -c <import every fastdistill module with {', '.join(OPTIONAL)} hidden, "
                    "then `fastdistill doctor`>")
    run = c.run(step, [c.python, "-c", _IMPORTS], c.env())
    step.results = _tagged_json(run.output, "IMPORTS")
    step.results["installed_optional"] = sorted(k for k, v in c.probe.get("packages", {}).items() if v)
    failed = step.results.get("failed")
    if failed:
        step.status, step.reason = "fail", f"modules failing to import: {', '.join(failed)}"
    elif run.rc != 0:
        step.status, step.reason = "fail", _failure(run, "the import check or fastdistill doctor")
    else:
        step.status = "pass"


def _pytest(c: Check, step: Step, argv: list[str], env: dict, what_dry: str, dry_argv: Optional[list[str]] = None) -> Run:
    """A pytest step: GPU mode runs `argv`, dry mode `dry_argv` (default the same) with CUDA hidden;
    the status follows pytest's exit status, the counts and outcomes go into the results."""
    if c.dry:
        argv = dry_argv or argv
        step.checked = shlex.join(argv)
    run = c.run(step, argv, c.env(**env))
    step.results["tests"] = pytest_counts(run.output)
    step.results.update(pytest_outcomes(run.output))
    if run.rc != 0 or run.timed_out:
        step.status, step.reason = "fail", _failure(run, "pytest")
    elif c.dry:
        step.status, step.reason = NO_CUDA, f"{c.dry_reason}: {what_dry}"
    else:
        step.status = "pass"
    return run


def gpu_tests(c: Check, step: Step, skip: Optional[str]) -> None:
    env = {"FASTDISTILL_REQUIRE_BACKENDS": "cpp,cuda,triton,cuda-build"}
    args = ["tests", "-m", "gpu", "-v", "-rfEs", "-p", "no:cacheprovider"]
    argv = [c.python, "-m", "pytest", *args]
    step.command = _env_prefix(env) + shlex.join(argv)
    if skip:
        return
    # dry: with the optional packages hidden too, as on the GPU machines (the test modules must collect without them)
    hidden = [c.python, "-c", _HIDE + "import pytest\nsys.exit(pytest.main(sys.argv[1:]))\n", *args]
    _pytest(c, step, argv, env, "the GPU tests collect and skip, with the optional packages hidden", hidden)
    if c.dry and step.status == NO_CUDA and step.results["tests"].get("passed"):
        step.status, step.reason = "fail", "GPU-marked tests passed without a CUDA device: they do not skip"


def _benchmark(c: Check, step: Step, run: Run, json_path: Path, title: str, key: str, rows) -> None:
    """A benchmark's numbers: its JSON (written even when it was stopped at its limit) and its printed summary."""
    if c.dry or not json_path.is_file():
        return
    step.results["json"] = json_path.name
    step.results[key] = rows(json.loads(json_path.read_text()))
    step.results["summary"] = summary_section(run.output, title)


def loss_benchmarks(c: Check, step: Step, skip: Optional[str]) -> None:
    json_path = c.out / "loss-benchmarks.json"
    argv = [c.python, "-m", "pytest", "benchmarks/test_loss_benchmarks.py", "-k", LOSS_K, "--benchmark-json",
            str(json_path), "--benchmark-max-time", "0.5", "-q", "-rfEs", "-p", "no:cacheprovider"]
    step.command = shlex.join(argv)
    if skip:
        return
    dry = [c.python, "-m", "pytest", "benchmarks/test_loss_benchmarks.py", "--collect-only", "-q", "-p", "no:cacheprovider"]
    run = _pytest(c, step, argv, {}, "the benchmark file collects (its CUDA cases exist only with a GPU)", dry)
    _benchmark(c, step, run, json_path, "fastdistill loss benchmarks", "cases", loss_benchmark_rows)


def iteration_benchmark(c: Check, step: Step, skip: Optional[str]) -> None:
    json_path = c.out / "iteration-benchmark.json"
    argv = [c.python, "-m", "pytest", "benchmarks/test_iteration_benchmark.py", "-k", ITERATION_K, "--benchmark-json",
            str(json_path), "-q", "-rfEs", "-p", "no:cacheprovider"]
    step.command = shlex.join(argv)
    if skip:
        return
    dry = [c.python, "-m", "pytest", "benchmarks/test_iteration_benchmark.py", "-k", ITERATION_K, "--collect-only",
           "-q", "-p", "no:cacheprovider"]
    run = _pytest(c, step, argv, {}, "the selected rows collect", dry)
    if c.dry and step.status == NO_CUDA and not step.results["tests"].get("collected"):
        step.status, step.reason = "fail", f"-k {ITERATION_K!r} selects no benchmark"
    _benchmark(c, step, run, json_path, "fastdistill iteration benchmark", "rows", iteration_benchmark_rows)


def sid_digits(c: Check, step: Step, skip: Optional[str]) -> None:
    run_dir = c.out / "digits-sid"
    overrides = ["device=cuda", *SID_OVERRIDES, f"out_dir={run_dir}"]
    if not c.probe.get("packages", {}).get("torch_fidelity"):
        overrides.append("eval_data=none")
        step.results["fid_note"] = "FID not measured: torch-fidelity is not installed (the digits FID is computed through it)"
    argv = [c.python, "-m", "fastdistill.cli", "distill", "--preset", "digits", *overrides]
    step.command = f"{shlex.join(argv)}  # SIGINT (checkpoint and stop) after at most {SID_MAX_S} s"
    if skip:
        return
    if c.dry:
        check = [c.python, "-m", "fastdistill.cli", "config", "--preset", "digits",
                 *[("device=cpu" if o == "device=cuda" else o) for o in overrides]]
        step.checked = shlex.join(check)
        run = c.run(step, check, c.env())
        if run.rc != 0:
            step.status, step.reason = "fail", _failure(run, "fastdistill config with the run's settings")
        else:
            step.status, step.reason = NO_CUDA, f"{c.dry_reason}: the run's settings validate (with device=cpu)"
        return
    if step.limit_s < SID_MIN_S + GRACE_S:
        step.reason = f"only {max(step.limit_s, 0):.0f} s of the budget left (it needs {SID_MIN_S + GRACE_S} s)"
        return
    run = c.run(step, argv, c.env())
    step.results.update(sid_results(run.output, run_dir / "metrics.jsonl"))
    step.results["stopped_at_time_limit"] = run.timed_out
    if not step.results["steps"]:
        step.status, step.reason = "fail", f"no training step logged in {run.seconds:.0f} s; " + _failure(run, "the run")
    elif run.timed_out and run.rc != 128 + signal.SIGINT:
        step.status, step.reason = "fail", f"the run did not stop cleanly at its time limit (exit status {run.rc})"
    elif not run.timed_out and run.rc != 0:
        step.status, step.reason = "fail", _failure(run, "the run")
    else:
        step.status = "pass"


RUNNERS = {"build": build, "imports": imports, "gpu-tests": gpu_tests, "loss-benchmarks": loss_benchmarks,
           "iteration-benchmark": iteration_benchmark, "sid-digits": sid_digits}


# ----------------------------------------------------------------------------- the summaries
def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def key_numbers(step: Step) -> str:
    """One table cell: the numbers a reader looks for first."""
    r = step.results
    if step.name == "build":
        kernels = r.get("cuda_kernels")
        return f"arch {r.get('arch_list')}" + ("" if kernels is None else f", CUDA kernels {'yes' if kernels else 'no'}")
    if step.name == "imports":
        return f"{r.get('modules', '-')} modules, {len(r.get('failed', []))} failed"
    if "tests" in r:
        t = r["tests"]
        text = ", ".join(f"{v} {k}" for k, v in t.items() if v) or "no tests"
        if r.get("cases"):
            text += "; " + ", ".join(f"{x['op']} {x['provider']} {_fmt(x['vs_eager'], '.1f', 'x')} eager / "
                                     f"{_fmt(x['vs_compiled'], '.2f', 'x')} compiled" for x in r["cases"])
        if r.get("rows"):
            text += "; " + ", ".join(f"{x['method']} {x['row']} {_fmt(x['images_per_s'], '.0f')} img/s"
                                     + (f" ({x['speedup_vs_eager']:.2f}x)" if x.get("speedup_vs_eager") else "")
                                     for x in r["rows"])
        return text
    if step.name == "sid-digits" and "steps" in r:
        text = f"{r['steps']} steps, {_fmt(r.get('img_per_s_median'), '.0f')} img/s, MFU {_fmt(r.get('mfu_median'), '.1%')}"
        return text + (f", FID {r['fid']:.3f} at step {r['fid_step']}" if "fid" in r else f"; {r.get('fid_note', 'no FID logged')}")
    return r.get("fid_note", "")


def write_summaries(c: Check, steps: list[Step], started: str, dest: Path) -> int:
    """results.json and summary.txt into ``dest``, summary.md into the working folder; returns the exit status."""
    failed = [s.name for s in steps if s.status == "fail"]
    summary = {
        "status": "fail" if failed else "pass",
        "failed_steps": failed,
        "mode": "dry" if c.dry else "gpu",
        "dry_reason": c.dry_reason,
        "started": started,
        "seconds": round(time.monotonic() - c.t0, 1),
        "budget_s": None if c.dry else round(c.deadline + FINISH_S - c.t0),
        "git": _git(),
        "environment": c.probe,
        "steps": [asdict(s) for s in steps],
    }
    (dest / RESULTS).write_text(json.dumps(summary, indent=2) + "\n")
    gpus = ", ".join(f"{g['name']} (sm {g['capability']})" for g in c.probe.get("gpus", [])) or "no CUDA device"
    p = c.probe
    mode = f"GPU mode (budget {summary['budget_s']} s)" if not c.dry else f"dry mode: {c.dry_reason}"
    text = [f"fastdistill GPU check: {summary['status'].upper()} in {summary['seconds']:.0f} s, {mode}; {gpus}; "
            f"torch {p.get('torch')}, triton {p.get('triton')}, python {p.get('python')}; "
            f"commit {summary['git'].get('commit', '?')[:12]}"]
    for s in steps:
        figures = key_numbers(s)
        why = f" [{s.reason}]" if s.reason and s.status != "pass" else ""
        text.append(f"{s.status.split()[0].upper():<7} {s.name:<20} {s.seconds:6.1f} s  {figures}{why}")
    (dest / SUMMARY).write_text("\n".join(text) + f"\n(full outputs: {DETAILS})\n")
    lines = [
        "# fastdistill GPU check", "",
        f"**{summary['status'].upper()}** in {summary['seconds']:.0f} s, "
        + (f"GPU mode (budget {summary['budget_s']} s)" if not c.dry else f"dry mode: {c.dry_reason}") + f", started {started}", "",
        f"{gpus}; torch {p.get('torch')} (CUDA {p.get('torch_cuda')}), triton {p.get('triton')}, "
        f"python {p.get('python')}, nvcc: {p.get('nvcc') or 'not found'}; commit {summary['git'].get('commit', '?')}"
        + (" (uncommitted changes)" if summary["git"].get("dirty") else ""),
        f"optional packages installed: {', '.join(k for k, v in p.get('packages', {}).items() if v) or 'none'}", "",
        "| step | status | seconds | results | reason |", "|---|---|---|---|---|",
    ]
    for s in steps:
        cells = [s.name, s.status, f"{s.seconds:.1f}", key_numbers(s), s.reason]
        lines.append("| " + " | ".join(x.replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
    lines += ["", "## Commands", ""]
    for s in steps:
        lines.append(f"- **{s.name}** (log: `{s.log or '-'}`): `{s.command}`" + (f"; checked instead: `{s.checked}`" if s.checked else ""))
    for s in steps:
        r = s.results
        if r.get("summary"):
            lines += ["", f"## {s.name}: the benchmark's own summary", "", "```", r["summary"], "```"]
        if r.get("failed_tests"):
            lines += ["", f"## {s.name}: failed", ""] + [f"- `{t}`" for t in r["failed_tests"]]
        if r.get("skip_reasons") and not c.dry:
            lines += ["", f"## {s.name}: skip reasons", ""] + [f"- {t}" for t in r["skip_reasons"]]
    sid = next(s for s in steps if s.name == "sid-digits").results
    if "steps" in sid:
        lines += ["", "## SiD on digits", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, '.4g') if isinstance(v, float) else v} |" for k, v in sid.items()]
    (c.out / "summary.md").write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


def pack_details(work: Path, dest: Path) -> None:
    """Everything of the working folder but the SiD run's checkpoints, as one tarball in ``dest``."""
    def keep(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
        return None if "/checkpoints" in info.name else info

    with tarfile.open(dest / DETAILS, "w:gz") as tar:
        for path in sorted(work.iterdir()):
            tar.add(path, arcname=path.name, filter=keep)


def _git() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode != 0:
        return {}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def probe(out: Path) -> dict:
    """The machine, torch, the toolkit and the optional packages, from a child process (so a torch
    that cannot even import is a recorded failure, not a crash of this script)."""
    log = out / "logs" / "environment.log"
    argv = [sys.executable, "-c", _PROBE]
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=PROBE_LIMIT_S)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        text, rc = f"[timed out after {PROBE_LIMIT_S} s]", None
    log.write_text(f"$ {_display(argv)}\n{text}\n[exit status {rc}]\n")
    info = _tagged_json(text, "PROBE")
    if not info:
        info = {"error": _last_line(text), "cuda_available": False}
    return info


def run_step(c: Check, name: str, skip: Optional[str]) -> Step:
    """One step; an error of this script inside it (a parser meeting output it does not expect, say)
    fails that step, with the traceback in its log, and the check goes on."""
    step = Step(name, reason=skip or "", limit_s=round(c.limit(name), 1))
    try:
        RUNNERS[name](c, step, skip)
    except Exception as exc:
        with open(c.logs / f"{name}.log", "a") as f:
            f.write("gpu_check: " + traceback.format_exc())
        step.status, step.reason, step.log = "fail", f"gpu_check itself failed here: {type(exc).__name__}: {exc}", f"logs/{name}.log"
    print(f"gpu_check: {name}: {step.status} ({step.seconds:.0f} s){': ' + step.reason if step.reason else ''}", flush=True)
    return step


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help=f"where {SUMMARY}, {RESULTS} and {DETAILS} go (new or empty)")
    parser.add_argument("--dry", action="store_true", help="say what would run and do only the cheap parts, even with a GPU")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check in GPU mode (default {BUDGET_S})")
    args = parser.parse_args(argv)
    if args.budget < MIN_BUDGET_S:
        parser.error(f"--budget {args.budget:g}: at least {MIN_BUDGET_S:.0f} s (every step's share and the SiD run's "
                     f"minimum must fit)")
    out = Path(args.out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"{out} exists and is not an empty directory: give a new one (results are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fastdistill-gpu-check-"))
    try:
        return _check(args, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check(args: argparse.Namespace, out: Path, work: Path) -> int:
    (work / "logs").mkdir()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    info = probe(work)
    if args.dry:
        dry_reason = "--dry given"
    elif "error" in info:
        dry_reason = f"the environment probe failed ({info['error']})"
    elif not info["cuda_available"]:
        dry_reason = "no CUDA device (torch.cuda.is_available() is False)"
    else:
        dry_reason = None
    c = Check(work, dry_reason, t0, args.budget, info)
    if c.dry:  # independent cheap checks, side by side: the dry run stays short
        with ThreadPoolExecutor(len(STEPS)) as pool:
            steps = list(pool.map(lambda name: run_step(c, name, None), STEPS))
    else:
        steps = []
        for name in STEPS:
            failed_build = name in NEEDS_BUILD and steps[0].status == "fail"
            steps.append(run_step(c, name, "needs the build, which failed" if failed_build else None))
    rc = write_summaries(c, steps, started, out)
    pack_details(work, out)
    print((out / SUMMARY).read_text(), end="")
    return rc


if __name__ == "__main__":
    sys.exit(main())
