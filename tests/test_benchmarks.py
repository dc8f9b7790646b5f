"""The benchmarks cannot rot: each script runs in its tiny mode and prints its summary."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_benchmark_runs_in_tiny_mode(script):
    out = subprocess.run([sys.executable, str(BENCH / script), "--tiny"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "== Summary" in out.stdout, out.stdout[-3000:]
    assert "Traceback" not in out.stderr
