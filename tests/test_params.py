"""Every parameter of every notebook is checked before any compute: each notebook's check cell,
given one bad value per parameter (on top of its smoke profile), stops with an error that names
that parameter, and no model is loaded and no SAE trained before it."""

from __future__ import annotations

import ast

import pytest

from resa_utils.harness import params as P
from resa_utils.harness import run

WRONG_TYPE = {bool: "maybe", int: "big", float: "big", str: 3, list: "x", tuple: "x"}
"""A value of the wrong type for a parameter whose default has this type."""
OUT_OF_RANGE = {int: -3, float: -1.5, str: "no-such-value-xyz", list: []}
"""A value of the right type that no parameter of that type accepts."""


def _cases():
    for nb in run.list_notebooks():
        for name, default in run.notebook_parameters(nb).items():
            kind = type(ast.literal_eval(default))
            for label, table in (("type", WRONG_TYPE), ("range", OUT_OF_RANGE)):
                if kind in table:
                    yield pytest.param(nb, name, table[kind], id=f"{nb}-{name}-{label}")


@pytest.fixture
def no_compute(monkeypatch):
    """Loading a model or training an SAE during the checks fails the test."""
    import resa_utils.lm.models
    import resa_utils.sae.train

    def refuse(*_a, **_k):
        raise AssertionError("compute started before the parameters were checked")

    monkeypatch.setattr(resa_utils.lm.models, "load_model", refuse)
    monkeypatch.setattr(resa_utils.sae.train, "train_sae", refuse)


@pytest.mark.parametrize("notebook,name,bad", list(_cases()))
def test_bad_value_is_named_before_compute(notebook, name, bad, no_compute):
    good = run.load_params("smoke", notebook)
    run.check_params(notebook, good)  # the smoke profile itself passes
    with pytest.raises(P.ParameterError, match=rf"parameter `{name}(\[\d+\])?` = "):
        run.check_params(notebook, {**good, name: bad})


def test_every_parameter_of_every_notebook_has_a_case():
    covered = {(c.values[0], c.values[1]) for c in _cases()}
    for nb in run.list_notebooks():
        for name in run.notebook_parameters(nb):
            assert (nb, name) in covered, f"{nb}: no bad value for parameter {name}"


def test_checks_refuse_what_they_should():
    with pytest.raises(P.ParameterError, match="must be an integer"):
        P.integer(min=1)("n", True, {})  # a bool is not an int
    with pytest.raises(P.ParameterError, match=r"n\[1\]"):
        P.list_of(P.integer(min=1))("n", [1, 0], {})
    with pytest.raises(P.ParameterError, match="p_high >= p_low"):
        P.pair(P.real(gt=0), relation=lambda a, b: a >= b, relation_text="p_high >= p_low")(
            "ladder", [0.1, 0.5], {})
    P.integer(min=0, allow=(-1,))("layer", -1, {})


def test_model_checks_are_offline_and_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check = P.model()
    check("m", "tiny-llama", {})
    with pytest.raises(P.ParameterError, match="unknown model"):
        check("m", str(tmp_path / "missing"), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(P.ParameterError, match="no config.json"):
        check("m", str(tmp_path / "empty"), {})
    with pytest.raises(P.ParameterError, match="hub is unreachable"):
        check("m", "org/not-cached-anywhere", {})
    with pytest.raises(P.ParameterError, match="out of range.*0..3"):
        P.layer("model")("layer", 4, {"model": "tiny-llama"})


def test_gpu_profile_refuses_cpu_unless_allowed(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(P.ParameterError, match="allow_cpu"):
        P.gpu_or_allowed(False)
    P.gpu_or_allowed(True)


def test_papermill_reads_every_assignment_of_every_parameters_cell():
    """papermill skips a line it cannot parse (e.g. quotes or '=' in a comment) and then that
    parameter can be neither overridden nor checked: compare with Python's own parse."""
    import nbformat

    from resa_utils.harness.tracking import notebooks_dir, parameters_cell

    for nb in run.list_notebooks():
        book = nbformat.read(notebooks_dir() / f"{nb}.ipynb", as_version=4)
        source = book.cells[parameters_cell(book)].source
        names = {node.targets[0].id for node in ast.parse(source).body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
        assert names == set(run.notebook_parameters(nb)), f"{nb}: papermill misses {names - set(run.notebook_parameters(nb))}"


def _assert_refused(notebook: str, change: dict, name: str, text: str) -> None:
    """The smoke profile's parameters with `change` are refused, naming `name` and saying `text`."""
    good = run.load_params("smoke", notebook)
    with pytest.raises(P.ParameterError, match=rf"parameter `{name}(\[\d+\])?` = .*{text}"):
        run.check_params(notebook, {**good, **change})


def _real_tokenizers_or_skip() -> None:
    from resa_utils.lm.models import load_tokenizer

    if load_tokenizer("smollm2-135m-instruct") is None or load_tokenizer("gemma-3-270m") is None:
        pytest.skip("real tokenizers not converted yet: run `make models` (it converts gemma-3-270m and smollm2-135m-instruct)")


@pytest.mark.parametrize("change,name,text", [
    ({"layers": [0, 9]}, "layers", "out of range"),
    ({"dense_threshold": 1.5}, "dense_threshold", ""),
    ({"seed_match_cos": 0.0}, "seed_match_cos", ""),
    ({"corpus": "wiki-vital"}, "pos_analysis", "no tags"),
    ({"eval_tokens": 500, "ce_tokens": 126}, "eval_tokens", "at least 2000"),
    ({"ce_tokens": 4096}, "ce_tokens", "must not exceed eval_tokens"),
    ({"density_sweep": [0.05, 0.2]}, "density_sweep", "should include dense_threshold"),
])
def test_dense_latents_cross_checks(change, name, text, no_compute):
    _assert_refused("03_dense_latents", change, name, text)
    good = run.load_params("smoke", "03_dense_latents")
    run.check_params("03_dense_latents", {**good, "corpus": "wiki-vital", "pos_analysis": False})


@pytest.mark.parametrize("change,name,text", [
    ({"steer_source_layer": 9}, "steer_source_layer", "out of range"),
    ({"steer_target_layer": 9}, "steer_target_layer", "out of range"),
    ({"alphas": [-1.0, 0.5, 1.0]}, "alphas", "must include 0"),
    ({"alphas": [-1.0, -0.5, 0.0]}, "alphas", "positive strength"),
    ({"fit_share": 0.99}, "fit_share", "held-out prompt"),
    ({"fit_share": 0.01}, "fit_share", "fits behaviour"),
    ({"fit_tokens": 1000, "seq_len": 600}, "fit_tokens", "too few for train"),
    ({"cross_target": ""}, "cross_target", "go together"),
    ({"strict_tokens": True}, "strict_tokens", "tokens for tiny-qwen2"),
])
def test_lrt_cross_checks(change, name, text, no_compute):
    _assert_refused("02_lrt_affine_transfer", change, name, text)


def test_lrt_refuses_one_to_one_pairing_of_two_tokenizers(no_compute):
    _real_tokenizers_or_skip()
    good = run.load_params("smoke", "02_lrt_affine_transfer")
    bad = {**good, "cross_source": "smollm2-135m-instruct", "cross_target": "gemma-3-270m", "cross_pairing": "tokens"}
    with pytest.raises(P.ParameterError, match="parameter `cross_pairing` = .*tokenize differently.*word_end"):
        run.check_params("02_lrt_affine_transfer", bad)
    run.check_params("02_lrt_affine_transfer", {**bad, "cross_pairing": "word_end"})


@pytest.mark.parametrize("change,name,text", [
    ({"pool_r": 0.95}, "pool_r", "needs r_low"),
    ({"dose_activation": "topk"}, "dose_activation", "must be one of activations"),
    ({"dose_models": ["-x3"]}, "dose_models", "has not registered"),
    ({"steer_scales": [0.5, 1.0]}, "steer_scales", "must include 0"),
    ({"ablation_windows": 500}, "ablation_windows", "exceeds the"),
    ({"train_tokens": 10}, "train_tokens", "less than one batch"),
    ({"layer": 99}, "layer", "out of range"),
    ({"max_norm_ratio": 1.0}, "max_norm_ratio", ""),
])
def test_distill_crosscoders_cross_checks(change, name, text, no_compute):
    _assert_refused("04_distill_crosscoders", change, name, text)


def test_distill_crosscoders_refuse_two_tokenizers(no_compute):
    _real_tokenizers_or_skip()
    good = run.load_params("smoke", "04_distill_crosscoders")
    with pytest.raises(P.ParameterError, match=r"parameter `reasoner_model` = .*another tokenizer than base_model='smollm2"):
        run.check_params("04_distill_crosscoders", {**good, "base_model": "smollm2-135m-instruct", "reasoner_model": "gemma-3-270m"})


@pytest.mark.parametrize("change,name,text", [
    ({"layer": 9}, "layer", ""),
    ({"sweep_layers": [3]}, "sweep_layers", "must include layer"),
    ({"sweep_layers": [1, 9]}, "sweep_layers", ""),
    ({"profile": "cpu"}, "source_model", "is the target itself"),
    ({"n_layer_test": 100}, "n_layer_test", "exceeds n_test"),
    ({"n_tune_problems": 1}, "n_tune_problems", "training set would be empty"),
    ({"n_heldout_problems": 1}, "n_heldout_problems", "less than one held-out chunk"),
    ({"sweep_layers": [1, 3]}, "sweep_layers", "holds the last block"),
    ({"eval_steps": [4]}, "eval_steps", "below tune_steps"),
])
def test_resa_cross_checks(change, name, text, no_compute):
    _assert_refused("01_resa_sae_tuning", change, name, text)


def test_resa_names_notebook_00_when_its_models_are_missing(no_compute, monkeypatch):
    import resa_utils.lm.adapters

    monkeypatch.setattr(resa_utils.lm.adapters, "is_registered", lambda name: False)  # whatever earlier tests registered
    _assert_refused("01_resa_sae_tuning", {"target_model": ""}, "target_model", "not registered: notebook 00")


def test_resa_refuses_a_source_of_another_architecture(no_compute):
    _real_tokenizers_or_skip()
    good = run.load_params("smoke", "01_resa_sae_tuning")
    same = {**good, "profile": "smoke", "target_model": "smollm2-135m-instruct", "sweep_layers": [1, 2]}
    run.check_params("01_resa_sae_tuning", {**same, "source_model": "smollm2-135m-instruct"})
    with pytest.raises(P.ParameterError, match="parameter `source_model` = .*blocks where the target has"):
        run.check_params("01_resa_sae_tuning", {**same, "source_model": "gemma-3-270m"})


@pytest.mark.parametrize("make,problem", [
    (lambda d: (d / "c.txt").write_text(""), "is an empty file"),
    (lambda d: (d / "c.txt").write_text("  \n\n\t\n"), "holds only blank space"),
    (lambda d: (d / "c.jsonl").write_text('\n{"text": "  "}\n'), "has no record with text in 'text'"),
    (lambda d: (d / "c.jsonl").write_text('{"body": "x"}\n'), "line 1 has no field 'text'"),
    (lambda d: (d / "c").mkdir(), "is a folder with no .txt or .jsonl file"),
    (lambda d: ((d / "c").mkdir(), (d / "c" / "a.txt").write_text("")), "a.txt is an empty file"),
])
def test_a_corpus_without_text_is_refused_naming_the_parameter(tmp_path, make, problem):
    make(tmp_path)
    path = next(p for p in tmp_path.iterdir())
    with pytest.raises(P.ParameterError, match=rf"parameter `corpus` = '{path}': .*{problem}.*Fix: point `corpus` at"):
        P.corpus()("corpus", str(path), {})
    (path / "b.txt" if path.is_dir() else path).write_text("some text\n" if path.suffix != ".jsonl" else '{"text": "t"}\n')
    P.corpus()("corpus", str(path), {})  # with text it passes
