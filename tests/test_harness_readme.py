"""Every command the README shows works: each `python -m resa_utils.harness.run ...` runs with
`--dry-run` (all its parameters checked, nothing computed) or `--list`, and each `make ...`
names a real target (`make -n`). A wrong example (an unknown parameter, a bad option) fails."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from resa_utils.harness import run

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = ("hub is unreachable", "no CUDA device is visible", "not registered: notebook 00")
"""Refusals that depend on this machine, not on the command (offline tests, no GPU, notebook 00
not run here): the command itself is well-formed."""


def readme_commands() -> list[list[str]]:
    """The runner and make commands in README.md's code blocks and inline code, as argv lists
    (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    snippets = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
        snippets += block.splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    snippets += re.findall(r"`([^`\n]+)`", prose)
    out = []
    for line in snippets:
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:
            continue
        if "resa_utils.harness.run" in argv or (argv and argv[0] == "make"):
            if argv not in out:
                out.append(argv)
    return out


def runner_args(argv: list[str]) -> list[str]:
    return argv[argv.index("resa_utils.harness.run") + 1:]


def test_the_readme_shows_runner_and_make_commands():
    commands = readme_commands()
    runner = [c for c in commands if "resa_utils.harness.run" in c]
    assert len(runner) >= 5 and any("-p" in c for c in runner)
    assert {"reproduce", "test", "test-fast", "smoke", "lab"} <= {c[1] for c in commands if c[0] == "make" and len(c) > 1}


@pytest.mark.parametrize("argv", [c for c in readme_commands() if "resa_utils.harness.run" in c],
                         ids=lambda c: " ".join(runner_args(c)) or "all")
def test_a_readme_runner_command_checks_out(argv, capsys, monkeypatch):
    monkeypatch.delenv("RESA_NOTEBOOKS_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    args = runner_args(argv)
    code = run.main(args if "--list" in args else [*args, "--dry-run"])
    err = capsys.readouterr().err
    if code == 1 and any(reason in err for reason in ENVIRONMENT):
        return  # well-formed; refused for this machine
    assert code == 0, f"README command `{shlex.join(argv)}` fails: {err}"


@pytest.mark.parametrize("argv", [c for c in readme_commands() if c[0] == "make"], ids=shlex.join)
def test_a_readme_make_command_names_a_target(argv):
    out = subprocess.run(["make", "-n", "--no-print-directory", *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"README command `{shlex.join(argv)}`: {out.stderr}"
