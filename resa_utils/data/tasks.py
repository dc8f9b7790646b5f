"""Graded reasoning problems from `reasoning-gym` (procedural, exact answers), split so train
and test never share a problem, in two text formats, with robust answer grading.

Formats:
- answer-only, in Resa's template: `Problem: {Q} <think> {A} </think> <answer> Answer: {A} </answer>`;
- R1-style worked traces: `<think>`, the task's own solution steps, templated self-checks
  ("Wait, let me check ..." recomputing a step), alternatives, deductions and contrasts, each
  at a parameter rate, `</think>`, then the answer. These traces are templated from the
  generator's solution, not sampled from a teacher model.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

TASKS = {
    "gsm_symbolic": {},
    "chain_sum": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2},
    "basic_arithmetic": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2},
}
"""Task sources by name, with the reasoning-gym config each uses at difficulty 1."""
DIFFICULTY_KEYS = {"chain_sum": ("max_terms", "max_digits"),
                   "basic_arithmetic": ("max_terms", "max_digits")}

SEED_GAP = 10_000_019
"""Distance between generator seeds of different splits (see `split_problems`)."""

SYSTEM_PROMPT = ("A conversation between User and Assistant. The user asks a question, and the "
                 "Assistant solves it. The assistant first thinks about the reasoning process "
                 "in the mind and then provides the user with the answer. The reasoning process "
                 "and answer are enclosed within <think> </think> and <answer> </answer> tags.")
"""R1-style system prompt, as Resa's code prepends."""


@dataclass
class Problem:
    task: str
    question: str
    answer: str
    steps: list[str] = field(default_factory=list)
    """The generator's own solution steps (empty where it gives none)."""
    template: int = -1
    """The generator's template index where it exposes one (gsm_symbolic), else -1."""
    uid: str = ""


def check_task(task: str, difficulty: int = 1) -> dict:
    """The reasoning-gym config of `task` at `difficulty`; a clear error for an unknown task
    (listing the valid ones) or a difficulty out of range."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {sorted(TASKS)}")
    cfg = dict(TASKS[task])
    if task in DIFFICULTY_KEYS:
        if not 1 <= difficulty <= 4:
            raise ValueError(f"difficulty={difficulty} for {task!r} must be in 1..4")
        terms, digits = DIFFICULTY_KEYS[task]
        cfg[terms] = cfg[terms] + difficulty - 1
        cfg[digits] = cfg[digits] + (difficulty - 1) // 2
    elif difficulty != 1:
        raise ValueError(f"task {task!r} has one difficulty (1), got difficulty={difficulty}")
    return cfg


def _dataset(task: str, size: int, seed: int, difficulty: int):
    import reasoning_gym as rg

    return rg.create_dataset(task, size=size, seed=seed, **check_task(task, difficulty))


def _steps(task: str, entry: dict) -> list[str]:
    meta = entry["metadata"]
    if task == "gsm_symbolic":
        cot = str(meta.get("answer_cot", "")).split("####")[0]
        return [ln.strip(" •\t") for ln in cot.splitlines() if ln.strip(" •\t")]
    expr = str(meta.get("expression", ""))
    steps = []
    tokens = expr.split()
    if tokens and all(re.fullmatch(r"-?\d+|[+\-]", t) for t in tokens):
        value = int(tokens[0])
        for op, num in zip(tokens[1::2], tokens[2::2]):
            new = value + int(num) if op == "+" else value - int(num)
            steps.append(f"{value} {op} {num} = {new}")
            value = new
    return steps or ([f"{expr} = {entry['answer']}"] if re.search(r"[\d+\-*/]", expr) else [])


def make_problems(task: str, n: int, seed: int, difficulty: int = 1) -> list[Problem]:
    """`n` problems of `task` from generator seed `seed`."""
    ds = _dataset(task, n, seed, difficulty)
    out = []
    for i in range(n):
        entry = ds[i]
        template = int(ds.task_indices[i]) if hasattr(ds, "task_indices") else -1
        out.append(Problem(task, entry["question"], str(entry["answer"]).strip(), _steps(task, entry),
                           template, f"{task}:{seed}:{i}"))
    return out


def split_problems(task: str, n_train: int, n_test: int, seed: int = 0,
                   difficulty: int = 1, test_frac_templates: float = 0.3) -> tuple[list, list]:
    """Train and held-out problems that never share a problem: different generator seeds, no
    question text in both, and (where the generator exposes templates) disjoint templates."""
    if n_test < 1 or n_train < 0:
        raise ValueError(f"need n_test >= 1 and n_train >= 0, got {n_test}, {n_train}")
    over = 4  # draw extra, since the template split discards some
    # reasoning-gym seeds item i with Random(seed + i), so nearby seeds give shifted copies of
    # one stream: train and test seeds lie SEED_GAP apart, more than any split's size
    train = make_problems(task, (n_train + 1) * over, SEED_GAP * (2 * seed + 1), difficulty)
    test = make_problems(task, n_test * over, SEED_GAP * (2 * seed + 2), difficulty)
    if any(p.template >= 0 for p in train + test):
        templates = sorted({p.template for p in train + test})
        rng = random.Random(seed)
        held = set(rng.sample(templates, max(1, round(len(templates) * test_frac_templates))))
        train = [p for p in train if p.template not in held]
        test = [p for p in test if p.template in held]
    seen = {p.question for p in train}
    test = [p for p in test if p.question not in seen and not seen.add(p.question)]  # unique too
    if len(test) < n_test or len(train) < n_train:
        raise ValueError(f"{task}: only {len(test)} held-out / {len(train)} training problems "
                         f"available for the requested {n_test} / {n_train}: lower them, or raise "
                         "test_frac_templates")
    return train[:n_train], test[:n_test]


# --------------------------------------------------------------------------- formats


def answer_only(p: Problem) -> str:
    """Resa's answer-only template (no reasoning steps)."""
    return f"Problem: {p.question} <think> {p.answer} </think> <answer> Answer: {p.answer} </answer>"


@dataclass
class TraceStyle:
    """Rates of the templated reflection phrases in worked traces."""

    wait_rate: float = 0.3
    """Per step: append 'Wait, let me check ...' recomputing that step."""
    alternative_rate: float = 0.15
    """Per trace: an 'Alternatively, ...' restatement of the final result."""
    therefore_rate: float = 0.5
    """Per computing step after the first: start it with 'Therefore, '."""
    however_rate: float = 0.1
    """Per trace: a 'However, ...' sentence that rules out a misreading."""


_COMPUTATION = re.compile(r"([£$]?-?\d[\d.,]*(?:\s?[A-Za-z/]+)?(?:\s*[-+×*/÷]\s*[£$]?-?\d[\d.,]*"
                          r"(?:\s?[A-Za-z/]+)?)+)\s*=\s*([£$]?-?[\d.,]*\d)")
"""`operand op operand ... = result` inside a solution step (units allowed: `6 days/week * 2`)."""


def worked_trace(p: Problem, style: TraceStyle, rng: random.Random) -> str:
    """`<think> steps with reflections </think> <answer> Answer: A </answer>` (templated)."""
    lines = []
    for i, step in enumerate(p.steps):
        computes = "=" in step and not step.rstrip().endswith(":")
        if i and computes and rng.random() < style.therefore_rate:
            step = "Therefore, " + step[:1].lower() + step[1:]
        lines.append(step)
        m = _COMPUTATION.search(step)
        if m and rng.random() < style.wait_rate:
            lines.append(f"Wait, let me check {m.group(1)}. It is {m.group(2)}. Yes.")
    if rng.random() < style.however_rate:
        lines.append("However, the question asks for one final number, so I report only that.")
    if rng.random() < style.alternative_rate:
        lines.append(f"Alternatively, going over the steps again gives {p.answer} as well.")
    lines.append(f"So the answer is {p.answer}.")
    return "<think>\n" + "\n".join(lines) + "\n</think>\n<answer> Answer: " + p.answer + " </answer>"


def prompt(p: Problem) -> str:
    """The question as the models see it at evaluation (before the chat template)."""
    return (f"{p.question}\nThink step by step inside <think> </think>, then give the final "
            "number inside <answer> Answer: ... </answer>.")


# --------------------------------------------------------------------------- grading

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
REFLECTION_PHRASES = ("Wait", "Alternatively", "Therefore", "However")


def extract_answer(text: str, lenient: bool = False) -> str | None:
    """The final answer of a generation: the first number inside the last `<answer>` block,
    else the first after the last 'answer is' / 'Answer:', else None. `lenient` falls back to
    the last number anywhere (a format-free reading, to tell format from arithmetic). Never
    raises."""
    if not isinstance(text, str) or not text.strip():
        return None
    if lenient:
        strict = extract_answer(text)
        if strict is not None:
            return strict
        nums = _NUMBER.findall(text)
        return nums[-1].replace(",", "") if nums else None
    blocks = _ANSWER_TAG.findall(text)
    scope = blocks[-1] if blocks else None
    if scope is None:
        m = list(re.finditer(r"answer(?: is|:)\s*", text, re.I))
        scope = text[m[-1].end():m[-1].end() + 80] if m else None
    if scope is None:
        return None
    nums = _NUMBER.findall(scope)
    return nums[0].replace(",", "") if nums else None


def is_correct(text: str, answer: str, tol: float = 1e-6, lenient: bool = False) -> bool:
    """Numeric comparison of the extracted answer with the reference; malformed is wrong."""
    got = extract_answer(text, lenient)
    if got is None:
        return False
    try:
        return abs(float(got) - float(str(answer).replace(",", ""))) <= tol * max(1.0, abs(float(answer)))
    except ValueError:
        return False


def reflection_counts(text: str) -> dict[str, int]:
    """How often each reflection phrase starts a word in `text`."""
    return {w: len(re.findall(rf"\b{w}\b", text or "")) for w in REFLECTION_PHRASES}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
