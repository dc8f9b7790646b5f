"""Shared set-up: an isolated cache/results/W&B folder per test session, tiny random models, and
the notebooks as nbval tests.

With `--nbval-lax` (as `make test` runs), every notebook is copied into `tests/_smoke_notebooks/`
with its `smoke` profile written into its parameters cell, and nbval runs each code cell of each
copy as a test item (`tests/_smoke_notebooks/05_gba_recovery.ipynb::Cell 4`), on the project's
kernel `resa`. Those items are marked `slow`, and so is every unit test listed in `SLOW`
below (with its measured time), so `pytest -m "not slow"` is the fast unit loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SMOKE_DIR = Path(__file__).parent / "_smoke_notebooks"
_ENV_KEYS = ("RESA_RESULTS_DIR", "RESA_CACHE_DIR", "WANDB_MODE", "WANDB_DIR", "HF_HUB_OFFLINE",
             "RESA_PROGRESS", "RESA_PROFILE")
_saved: dict[str, str | None] = {}


def pytest_configure(config):
    """Results, W&B and the activation/SAE caches go to a temp folder, so no state leaks in from
    earlier runs (the notebooks' kernels inherit it too); only the converted real models and the
    fetched corpora (slow to rebuild) are shared, by links. The hub is off: nothing waits on network time-outs."""
    from resa_utils.core.paths import cache_dir

    root = Path(tempfile.mkdtemp(prefix="resa-tests-"))
    config._resa_tmp = root
    (root / "cache").mkdir()
    for shared in ("models", "corpora"):  # converted models and fetched corpora: slow to rebuild
        (cache_dir() / shared).mkdir(parents=True, exist_ok=True)
        (root / "cache" / shared).symlink_to(cache_dir() / shared, target_is_directory=True)
    _saved.update({k: os.environ.get(k) for k in _ENV_KEYS})
    os.environ.update({"RESA_CACHE_DIR": str(root / "cache"), "RESA_RESULTS_DIR": str(root / "results"),
                       "WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"),
                       "HF_HUB_OFFLINE": "1", "RESA_PROGRESS": "text", "RESA_PROFILE": "smoke"})
    if getattr(config.option, "nbval_lax", False) or getattr(config.option, "nbval", False):
        write_smoke_notebooks()


def pytest_unconfigure(config):
    for k, v in _saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(getattr(config, "_resa_tmp", ""), ignore_errors=True)


def write_smoke_notebooks() -> list[Path]:
    """Copies of every notebook with the smoke profile's values appended to its parameters cell
    (so the copy's cells line up with the original's)."""
    import nbformat
    from papermill.translators import translate_parameters

    from resa_utils.harness import run
    from resa_utils.harness.tracking import parameters_cell

    shutil.rmtree(SMOKE_DIR, ignore_errors=True)
    SMOKE_DIR.mkdir()
    out = []
    for name in run.list_notebooks():
        nb = nbformat.read(str(run.notebooks_dir() / f"{name}.ipynb"), as_version=4)
        params = run.load_params("smoke", name)
        cell = nb.cells[parameters_cell(nb)]
        cell.source += "\n" + translate_parameters("python", "python", params,
                                                   "# smoke profile (written by tests/conftest.py)")
        path = SMOKE_DIR / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        out.append(path)
    return out


SLOW = {
    # `pytest -m "not slow"` (make test-fast) is the unit loop, about a minute. Every test listed
    # here (a "file::test" covers all its parameter sets) runs only in `make test`. The seconds
    # are each test's wall time as measured with --durations=0 in a full `make test-fast` on the
    # 2 shared cores, under heavy load from other jobs (about 3x their time on an idle machine).
    # Worker pools:
    "test_activations.py::test_cache_built_in_worker_processes_equals_one_process": 178,
    "test_tracking_and_sweep.py::test_sweep_in_worker_processes_matches_the_serial_sweep": 7,
    "test_harness_robustness.py::test_ctrl_c_while_a_worker_pool_runs_prints_one_line_and_no_traceback": 36,
    # LoRA / SAE-Tuning training, adapters:
    "test_lora.py::test_killed_training_resumes_to_the_same_adapter": 87,
    "test_lora.py::test_new_examples_retrain_and_init_adapter_continues": 31,
    "test_lora.py::test_only_adapters_train_and_the_loss_falls": 26,
    "test_lora.py::test_first_optimizer_step_runs_at_a_positive_lr": 8,
    "test_lora.py::test_command_line_trains_the_same_adapter": 7.5,
    "test_lora.py::test_lora_speed_is_measured_on_the_real_path": 7,
    "test_lora.py::test_a_model_marked_gguf_quantised_still_trains": 6.6,
    "test_sae_tuning.py::test_sae_tuning_lowers_the_kl_then_merges_to_the_same_logits": 30,
    "test_sae_tuning.py::test_kl_without_the_sae_is_a_no_op": 11,
    "test_sae_tuning.py::test_ce_option_and_heldout_losses": 7.7,
    "test_sae_tuning.py::test_an_adapter_moves_to_a_sibling_model": 3.8,
    "test_sae_tuning.py::test_kl_is_zero_at_init_without_the_sae_and_positive_with_it": 2.5,
    "test_adapters.py::test_registered_adapter_loads_by_name_with_the_same_outputs": 30,
    "test_adapters.py::test_unmade_reasoner_names_say_how_to_make_them": 25,
    "test_adapters.py::test_adapter_on_the_wrong_base_names_both": 22,
    "test_lora.py::test_full_finetuning_trains_every_weight_resumes_and_reloads": 21,
    "test_adapters.py::test_full_models_register_load_and_scale": 8,
    "test_distill.py::test_total_steps_matches_the_trainer_and_early_steps_lie_inside": 7.3,
    # real models / real tokenizers (skip until `make models` has converted them):
    "test_params.py::test_lrt_refuses_one_to_one_pairing_of_two_tokenizers": 45,
    "test_params.py::test_distill_crosscoders_refuse_two_tokenizers": 38,
    "test_params.py::test_resa_refuses_a_sibling_of_another_architecture": 17,
    "test_transfer.py::test_word_end_pairing_across_two_tokenizers": 6,
    "test_transfer.py::test_word_end_rows_point_at_tokens_ending_at_the_same_character": 4.2,
    # SAE and crosscoder training to convergence, harvests, generation on tiny models:
    "test_crosscoder.py::test_crosscoder_finds_shared_and_model_specific_directions": 437,
    "test_crosscoder.py::test_batchtopk_keeps_k_per_token_on_average_and_exports_its_threshold": 14,
    "test_crosscoder.py::test_token_logit_drops_are_zero_for_nothing_and_match_the_splice": 30,
    "test_crosscoder.py::test_paired_cache_pairs_the_same_tokens": 28,
    "test_crosscoder.py::test_kept_rows_leave_out_exactly_the_masked_rows": 19,
    "test_crosscoder.py::test_ablation_splice_is_exact_when_empty_and_moves_logits_otherwise": 13,
    "test_crosscoder.py::test_folding_the_normalisation_keeps_the_reconstruction": 5.2,
    "test_dense.py::test_cache_job_trains_on_the_projected_cache": 99,
    "test_sae.py::test_each_method_learns_and_keeps_unit_decoder": 59,
    "test_sae.py::test_gba_recovers_features_on_an_easy_case": 52,
    "test_sae.py::test_gba_biases_get_no_gradient_and_stay_in_range": 17,
    "test_sae.py::test_checkpoint_resume_matches_uninterrupted": 6.8,
    "test_sae.py::test_gba_jumprelu_export_matches_training_latents": 6.7,
    "test_sae.py::test_sae_lens_loads_our_files": 5.8,
    "test_sae.py::test_probes_score_the_sae_along_training_and_survive_resume": 3.5,
    "test_generation.py::test_batched_equals_unbatched_greedy": 103,
    "test_generation.py::test_evaluation_resumes_from_finished_batches": 21.5,
    "test_generation.py::test_sampling_is_seeded_and_greedy_is_the_default": 16,
    "test_generation.py::test_stop_strings_cut_and_empty_prompts_are_refused": 6.8,
    "test_distill.py::test_reasoning_models_figures_have_their_panels": 6.4,
    "test_distill.py::test_evaluate_model_row_and_cost_match_its_answers": 6.1,
    "test_activations.py::test_cache_roundtrip_and_resume": 14,
    "test_activations.py::test_a_16_bit_cache_halves_the_disk_and_reads_float32": 7.2,
    "test_activations.py::test_harvest_splits_counts_only_what_it_harvested": 6.6,
    "test_activations.py::test_cache_batches_are_shuffled_and_complete": 3.7,
    "test_content.py::test_spliced_ce_with_the_rule_leaves_window_starts_clean": 4,
    # (second measurement, after the list above: tests added since, same conditions)
    "test_sae_tuning.py::test_a_tuning_run_under_another_rule_is_not_reused": 18,
    "test_sae_tuning.py::test_kl_through_the_splice_under_the_rule_keeps_the_no_op_and_differs_from_the_rule_off": 4.4,
    "test_sae_tuning.py::test_noop_check_measures_an_exact_no_op": 4.3,
    "test_sae_tuning.py::test_evaluator_names_its_sweep_files_records_and_keys_batches_by_the_weights": 3.1,
    "test_sae_tuning.py::test_bad_inputs_are_refused_before_compute": 2.8,
    "test_adapters.py::test_scaled_adapters_scale_the_weight_change": 10.8,
    "test_crosscoder.py::test_run_ablation_measures_the_words_at_the_positions_predicting_them": 10.4,
    "test_crosscoder.py::test_crosscoder_figures_have_their_panels_and_labelled_dashed_lines": 3.2,
    "test_transfer.py::test_harvest_pair_caches_the_studied_blocks_of_both_models_and_reuses_them": 8.9,
    "test_distill.py::test_representation_change_is_zero_for_the_same_model_and_grows_with_a_scaled_change": 6.3,
    "test_dense.py::test_spliced_ce_once_keys_its_row_by_the_content_rule": 6.1,
    "test_dense.py::test_dense_figures_on_tiny_tables": 3.6,
    "test_steering.py::test_last_token_states_and_logit_diff_do_not_depend_on_batching": 6.1,
    "test_steering.py::test_generate_steered_steers_each_prompt_by_its_own_row": 4.1,
    "test_steering.py::test_running_from_a_prefix_matches_the_full_steered_forward": 3.3,
    "test_steering.py::test_evaluate_steered_rows_match_steered_generation_and_resume": 2.5,
    "test_activations.py::test_a_damaged_shard_is_re_harvested_by_the_next_build": 7.3,
    "test_synthetic.py::test_synthetic_run_scores_at_each_probe_and_at_the_stopping_point": 2.9,
    "test_recovery.py::test_ce_row_splices_under_the_rule_of_its_sweep_config": 2.9,
    "test_steering.py::test_steering_sweep_matches_steer_then_logit_diff_and_resumes": 7.4,
    "test_steering.py::test_steered_generation_table_one_row_per_prompt_one_column_per_vector": 5,
    "test_dense.py::test_spliced_ce_once_matches_spliced_ce_and_reuses_its_row": 3.2,
    "test_crosscoder.py::test_train_crosscoder_trains_once_and_again_when_the_weights_are_gone": 3,
    "test_sae_tuning.py::test_spliced_kl_leaves_the_sink_clean_and_matches_the_heldout_kl": 2.8,
    "test_sae_tuning.py::test_harvest_and_train_saes_resume_and_retrain_a_lost_sae": 2.8,
    "test_sae_tuning.py::test_gradients_reach_lora_parameters_only_and_before_the_splice_only_through_the_sae": 2.7,
    # subprocesses and whole-notebook checks:
    "test_nbclean.py::test_git_status_stays_clean_after_a_lab_save": 33,
    "test_harness_robustness.py::test_an_unfinished_run_ends_failed_at_interpreter_exit_after_a_long_backlog": 9.6,
    "test_harness_readme.py::test_a_readme_runner_command_checks_out[--profile smoke]": 3.2,
}
BAD_VALUE_FAMILY = "test_params.py::test_bad_value_is_named_before_compute["
"""One bad value per notebook parameter: ~580 cases of ~0.3 s (191 s in all, measured as above).
The first case of each notebook stays in the fast loop (its check cell runs); the rest are slow."""


def pytest_collection_modifyitems(config, items):
    """Mark `slow`: nbval's notebook cells, every test in `SLOW`, and all but one case per
    notebook of `BAD_VALUE_FAMILY`. Tests elsewhere may carry their own `@pytest.mark.slow`."""
    fast_bad_value: set[str] = set()
    for item in items:
        path, _, rest = item.nodeid.partition("::")
        nodeid = f"{Path(path).name}::{rest}"  # "test_x.py::test_y[params]", wherever pytest ran
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.slow)
        elif nodeid in SLOW or nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)
        elif nodeid.startswith(BAD_VALUE_FAMILY):
            notebook = nodeid[len(BAD_VALUE_FAMILY):].split("-")[0]
            if notebook in fast_bad_value:
                item.add_marker(pytest.mark.slow)
            fast_bad_value.add(notebook)


@pytest.fixture(scope="session")
def tiny_lm():
    from resa_utils.lm.models import load_model

    return load_model("tiny-gemma3", device="cpu")


@pytest.fixture(scope="session")
def tiny_windows(tiny_lm):
    from resa_utils.data.corpora import load_texts
    from resa_utils.data.windows import token_windows

    return token_windows(load_texts(), tiny_lm.tokenizer, 32, n_windows=24)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
