"""Batched greedy generation equals one-prompt-at-a-time greedy generation token for token;
stop strings cut; a killed evaluation resumes from its finished batches."""

import pytest
import torch

from resa_utils.lm.generation import evaluate, generate
from resa_utils.lm.models import load_model
from resa_utils.data.tasks import Problem

PROMPTS = ["The function returns", "A list", "Classes provide a means of bundling data",
           "x", "The import statement is used to bring", "Errors should never pass"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_batched_equals_unbatched_greedy(name):
    lm = load_model(name)
    batched = generate(lm, PROMPTS, max_new_tokens=12, batch_size=4)
    for prompt, got in zip(PROMPTS, batched):
        ids = lm.tokenizer(prompt, return_tensors="pt")
        ref = lm.model.generate(**ids, max_new_tokens=12, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)[0, ids.input_ids.shape[1]:]
        ref_text = lm.tokenizer.decode(ref, skip_special_tokens=True)
        assert got["text"] == ref_text, (prompt, got["text"], ref_text)
        assert got["n_tokens"] == len(ref)


def test_stop_strings_cut_and_empty_prompts_are_refused():
    lm = load_model("tiny-gemma3")  # its greedy text ends in repeats of 'gument'
    free = generate(lm, ["The function returns"], max_new_tokens=16)[0]["text"]
    assert free.count("gument") >= 2
    cut = generate(lm, ["The function returns"], max_new_tokens=16, stop=("gument",))[0]["text"]
    assert cut == free[:free.index("gument") + len("gument")]
    with pytest.raises(ValueError, match=r"prompts \[0\] tokenize to nothing"):
        generate(load_model("tiny-qwen2"), [""], max_new_tokens=2)


def test_evaluation_resumes_from_finished_batches(tmp_path, monkeypatch):
    lm = load_model("tiny-llama")
    problems = [Problem("t", f"question {i}", str(i), uid=f"t:{i}") for i in range(5)]
    calls = []
    import resa_utils.lm.generation as G

    real = G.generate

    def counting(lm_, prompts, *a, **k):
        calls.append(len(prompts))
        return real(lm_, prompts, *a, **k)

    monkeypatch.setattr(G, "generate", counting)
    path = tmp_path / "eval.jsonl"
    df = evaluate(lm, problems, lambda p: p.question, path, {"m": 1}, max_new_tokens=4, batch_size=2)
    assert len(df) == 5 and calls == [2, 2, 1] and set(df.columns) >= {"uid", "correct", "Wait"}
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1]) + "\n")  # as if killed after the first batch
    again = evaluate(lm, problems, lambda p: p.question, path, {"m": 1}, max_new_tokens=4, batch_size=2)
    assert calls == [2, 2, 1, 2, 1] and again.equals(df)


def test_chat_prompt_uses_the_template_without_a_second_bos():
    from resa_utils.lm.generation import chat_prompt

    tok = load_model("tiny-llama").tokenizer
    assert chat_prompt(tok, "2+2?") == "2+2?\n"  # no template: plain text
    tok.chat_template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    text = chat_prompt(tok, "2+2?", system="Be brief.")
    assert text.endswith("<system>Be brief.<user>2+2?<assistant>")
    ids = tok(text)["input_ids"]
    if tok.bos_token_id is not None:
        assert ids.count(tok.bos_token_id) <= 1


def test_sampling_is_seeded_and_greedy_is_the_default():
    from resa_utils.lm.generation import generate

    lm = load_model("tiny-llama")
    prompts = ["one two", "three four five"]
    a = generate(lm, prompts, 6, 2, temperature=1.0, seed=5)
    assert a == generate(lm, prompts, 6, 2, temperature=1.0, seed=5)
    assert a != generate(lm, prompts, 6, 2, temperature=1.0, seed=6)
    assert generate(lm, prompts, 6, 2) == generate(lm, prompts, 6, 2)
    with pytest.raises(ValueError, match="temperature"):
        generate(lm, prompts, 6, 2, temperature=-1.0)


def test_evaluation_reports_the_generation_time_of_every_batch(tmp_path):
    from resa_utils.data import tasks as T

    lm = load_model("tiny-llama")
    probs = T.make_problems("chain_sum", 4, seed=2)
    df = evaluate(lm, probs, lambda p: p.question, tmp_path / "e.jsonl", {"s": 1}, 4, batch_size=2)
    again = evaluate(lm, probs, lambda p: p.question, tmp_path / "e.jsonl", {"s": 1}, 4, batch_size=2)
    assert df.attrs["seconds"] > 0 and again.attrs["seconds"] == df.attrs["seconds"]  # kept, not re-timed
