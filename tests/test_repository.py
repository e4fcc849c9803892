"""What a user's clone must hold on its own: a README short enough to read (the details live in
docs/), and nothing in the package, benchmarks, kernels or docs that points at the developers'
``../shared`` folder, which a user's clone does not have."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 180


def test_readme_stays_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}: move details to docs/)"


def test_nothing_shipped_names_the_developers_shared_folder():
    hits = []
    for top in ("fastdistill", "benchmarks", "csrc", "docs", "scripts", "README.md"):
        paths = [REPO / top] if (REPO / top).is_file() else sorted((REPO / top).rglob("*"))
        for path in paths:
            if path.suffix not in (".py", ".md", ".cpp", ".cu", ".h", ".sh", ".toml", ".txt") or not path.is_file():
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if "DESIGN.md" in line or "../shared" in line:
                    hits.append(f"{path.relative_to(REPO)}:{i}")
    assert not hits, f"these name a file a user's clone lacks: {hits}"
