"""Notebook parameter checks, run in each notebook's first cell after `parameters`, before any
model load or training: every parameter gets a check, and a bad value stops the notebook with
an error that names the parameter and says how to fix it.

    from resa_utils.harness import params as P
    P.validate("05_gba_recovery", notebook_params(globals()), {
        "seed": P.integer(min=0),
        "model_name": P.model(),
        "layer": P.layer("model_name"),
        ...
    })
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from resa_utils.lm.hub import _hub_cached, hub_reachable

Check = Callable[[str, Any, dict], None]
"""`check(name, value, all_params)` raises `ParameterError` (through `fail`) on a bad value."""


class ParameterError(ValueError):
    """A notebook parameter has a bad value; the message names it and the fix."""


def fail(name: str, value: Any, problem: str, fix: str | None = None) -> None:
    msg = f"parameter `{name}` = {value!r}: {problem}."
    msg += f" Fix: {fix}" if fix else (f" Fix: set `{name}` in the parameters cell, or pass "
                                       f"`-p {name}=...` to `python -m resa_utils.harness.run`")
    raise ParameterError(msg)


def validate(notebook: str, params: dict, checks: dict[str, Check],
             extra: Callable[[dict], None] | None = None) -> None:
    """Check every parameter of `notebook`: each one needs an entry in `checks`; then run the
    cross-parameter checks in `extra(params)`."""
    missing = sorted(set(params) - set(checks))
    if missing:
        raise ParameterError(f"{notebook}: parameters {missing} have no check: add them to the "
                             "notebook's validate() call (if they are not parameters but variables "
                             "of an earlier run in this kernel, run the parameters cell again just "
                             "before this one, or restart the kernel)")
    for name, check in checks.items():
        if name not in params:
            raise ParameterError(f"{notebook}: parameter `{name}` is checked but not defined in "
                                 "the parameters cell")
        try:
            check(name, params[name], params)
        except ParameterError as err:
            raise ParameterError(f"{notebook}: {err}") from None
    if extra is not None:
        try:
            extra(params)
        except ParameterError as err:
            raise ParameterError(f"{notebook}: {err}") from None


# --------------------------------------------------------------------------- scalars


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range_text(min=None, max=None, gt=None, lt=None) -> str:
    parts = []
    if min is not None:
        parts.append(f">= {min}")
    if gt is not None:
        parts.append(f"> {gt}")
    if max is not None:
        parts.append(f"<= {max}")
    if lt is not None:
        parts.append(f"< {lt}")
    return " and ".join(parts)


def _in_range(v, min=None, max=None, gt=None, lt=None) -> bool:
    return ((min is None or v >= min) and (max is None or v <= max)
            and (gt is None or v > gt) and (lt is None or v < lt))


def integer(min: int | None = None, max: int | None = None, allow: tuple = ()) -> Check:
    """An int (not a bool) in [min, max], or one of the special values in `allow`."""
    def check(name, v, _p):
        if v in allow and (_is_int(v) or v is None):
            return
        if not _is_int(v):
            fail(name, v, "must be an integer" + (f" ({_range_text(min, max)})" if min is not None
                                                  or max is not None else ""),
                 f"write a whole number such as {min if min is not None else 1}"
                 " (YAML reads 1e6 as text: write 1000000)")
        if not _in_range(v, min, max):
            special = f", or one of {list(allow)}" if allow else ""
            fail(name, v, f"must be {_range_text(min, max)}{special}")
    return check


def real(min: float | None = None, max: float | None = None, gt: float | None = None,
         lt: float | None = None) -> Check:
    """A number (int or float, not a bool) in the given range."""
    def check(name, v, _p):
        if not _is_real(v):
            fail(name, v, f"must be a number ({_range_text(min, max, gt, lt)})",
                 "write a number such as 0.1 (in YAML write 1.0e-3, not 1e-3)")
        if v != v:  # NaN passes no comparison: say so rather than name the range
            fail(name, v, f"is NaN: it must be a number ({_range_text(min, max, gt, lt)})")
        if not _in_range(v, min, max, gt, lt):
            fail(name, v, f"must be {_range_text(min, max, gt, lt)}")
    return check


def threshold(min: float = 0.0, max: float | None = None) -> Check:
    """A precondition's threshold: a finite number in [min, max], fixed before the run."""
    inner = real(min=min, max=max)

    def check(name, v, p):
        inner(name, v, p)
        if v in (float("inf"), float("-inf")):
            fail(name, v, "must be finite: a threshold that nothing can reach tests nothing")
    return check


def boolean() -> Check:
    def check(name, v, _p):
        if not isinstance(v, bool):
            fail(name, v, "must be True or False", f"write -p {name}=true (or false)")
    return check


def choice(options: list | tuple) -> Check:
    """One of `options`."""
    def check(name, v, _p):
        if v not in options:
            fail(name, v, f"must be one of {list(options)}")
    return check


def profile() -> Check:
    """A parameter profile: a folder of `notebooks/params/` (set by the runner)."""
    def check(name, v, _p):
        from resa_utils.harness.tracking import notebooks_dir

        options = sorted(p.name for p in (notebooks_dir() / "params").iterdir() if p.is_dir())
        if v not in options:
            fail(name, v, f"must be one of the profiles {options}",
                 "leave it to the runner (`--profile NAME`), or set one of those")
    return check


def string(nonempty: bool = True) -> Check:
    def check(name, v, _p):
        if not isinstance(v, str) or (nonempty and not v.strip()):
            fail(name, v, "must be a non-empty string")
    return check


# --------------------------------------------------------------------------- containers


def list_of(item: Check, min_len: int = 1, max_len: int | None = None,
            unique: bool = False) -> Check:
    """A list (or tuple) whose every element passes `item`."""
    def check(name, v, p):
        if not isinstance(v, (list, tuple)):
            fail(name, v, f"must be a list (at least {min_len} item(s))",
                 f"write a list such as -p '{name}=[...]'")
        if len(v) < min_len or (max_len is not None and len(v) > max_len):
            size = f"{min_len}..{max_len}" if max_len is not None else f"at least {min_len}"
            fail(name, v, f"must hold {size} item(s), not {len(v)}")
        for i, x in enumerate(v):
            item(f"{name}[{i}]", x, p)
        if unique and len({repr(x) for x in v}) != len(v):
            fail(name, v, "must not repeat a value")
    return check


def pair(first: Check, second: Check | None = None,
         relation: Callable[[Any, Any], bool] | None = None, relation_text: str = "") -> Check:
    """A 2-item list `[a, b]`, each checked, optionally with `relation(a, b)`."""
    second = second or first

    def check(name, v, p):
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            fail(name, v, "must be a pair [a, b]")
        first(f"{name}[0]", v[0], p)
        second(f"{name}[1]", v[1], p)
        if relation is not None and not relation(v[0], v[1]):
            fail(name, v, f"must satisfy {relation_text}")
    return check


# --------------------------------------------------------------------------- resources


def require(ok: bool, name: str, value: Any, problem: str, fix: str | None = None) -> None:
    """A cross-parameter condition (use inside `validate(extra=...)`)."""
    if not ok:
        fail(name, value, problem, fix)


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.count("/") != 1 or Path(s).expanduser().exists()


def model() -> Check:
    """A registry model, a local model folder (with config.json), or a hub id (refused at once
    when the hub is unreachable and the model is not in the local hub cache)."""
    def check(name, v, _p):
        from resa_utils.lm.models import resolve_model_name
        from resa_utils.lm.registry import REGISTRY

        try:
            resolve_model_name(v)
        except ValueError as err:
            fail(name, v, str(err), "use a registry name, or the path of a folder with config.json")
        if v in REGISTRY or Path(v).expanduser().exists():
            return
        if not hub_reachable() and not _hub_cached(v):
            fail(name, v, "is a hub id, but the Hugging Face hub is unreachable (offline, or "
                 "HF_HUB_OFFLINE=1) and the model is not in the local hub cache",
                 f"use a registry model ({sorted(REGISTRY)}) or a local folder with the weights")
    return check


def layer(model_param: str, allow_middle: bool = True) -> Check:
    """A decoder-block index valid for the model in parameter `model_param` (-1 = middle)."""
    def check(name, v, p):
        from resa_utils.lm.models import check_layer

        if not _is_int(v) or (v == -1 and not allow_middle):
            fail(name, v, "must be a non-negative integer block index"
                 + (" (or -1 for the middle block)" if allow_middle else ""))
        try:
            check_layer(p[model_param], v, local_only=True)
        except ValueError as err:
            fail(name, v, str(err))
    return check


def layers(model_param: str) -> Check:
    """A non-empty list of distinct block indices valid for the model in `model_param`."""
    one = layer(model_param, allow_middle=False)
    return list_of(one, unique=True)


def corpus(known: tuple[str, ...] = ()) -> Check:
    """A named corpus, a local .txt/.jsonl file or folder, or a `datasets` hub name such as
    'org/name' (refused at once when the hub is unreachable)."""
    def check(name, v, _p):
        from resa_utils.data.corpora import corpus_names

        names = sorted(set(corpus_names()) | set(known))
        if not isinstance(v, str) or not v.strip():
            fail(name, v, f"must be a corpus: one of {names}, a local .txt/.jsonl path or folder")
        if v in names:
            return
        path = Path(v).expanduser()
        if path.exists():
            if path.is_file() and path.suffix not in (".txt", ".jsonl"):
                fail(name, v, "is a file but not .txt or .jsonl")
            problem = _corpus_problem(path)
            if problem:
                fail(name, v, problem, f"point `{name}` at a .txt/.jsonl file or folder with text, "
                     f"or use one of {names}")
            return
        if _looks_like_path(v):
            fail(name, v, f"is not a named corpus ({names}) nor an existing file or folder",
                 f"use one of {names} or the path of a .txt/.jsonl file")
        if not hub_reachable():
            fail(name, v, f"is not a named corpus ({names}) nor a local path, and the dataset "
                 "hub is unreachable", f"use one of {names} or a local .txt/.jsonl file")
    return check


def _corpus_problem(path: Path, text_field: str = "text") -> str | None:
    """Why a local corpus file or folder holds no text, None when it holds some. Reads only up
    to the first text found: a .txt file needs a non-blank character, a .jsonl file a first
    record that is a JSON object with a non-empty `text_field`, a folder one such file."""
    if not path.is_dir():
        return _file_problem(path, text_field)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".txt", ".jsonl"))
    if not files:
        return "is a folder with no .txt or .jsonl file in it"
    problems = []
    for f in files:
        problem = _file_problem(f, text_field)
        if problem is None:
            return None
        problems.append(f"{f.name} {problem}")
    more = "; ..." if len(problems) > 3 else ""
    return f"is a folder whose {len(files)} .txt/.jsonl file(s) hold no text ({'; '.join(problems[:3])}{more})"


def _file_problem(path: Path, text_field: str) -> str | None:
    import json

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            if path.suffix != ".jsonl":
                while chunk := fh.read(1 << 16):
                    if chunk.strip():
                        return None
                return "is an empty file" if path.stat().st_size == 0 else "holds only blank space"
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    return f"line {n} is not JSON"
                if not isinstance(row, dict) or text_field not in row:
                    return f"line {n} has no field {text_field!r}"
                if str(row[text_field]).strip():
                    return None
            return "is an empty file" if path.stat().st_size == 0 else f"has no record with text in {text_field!r}"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"


def gpu_or_allowed(allow_cpu: bool) -> None:
    """Refuse a GPU-sized profile on a machine without CUDA unless `allow_cpu`."""
    import torch

    if not allow_cpu and not torch.cuda.is_available():
        fail("allow_cpu", allow_cpu, "this profile is sized for a GPU and no CUDA device is "
             "visible, so it would run for hours on the CPU",
             "run it on a GPU machine, or pass `-p allow_cpu=true` (or --allow-cpu) to run anyway")
