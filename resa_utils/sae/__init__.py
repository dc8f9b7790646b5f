"""Sparse autoencoders: inference model, one trainer per method, metrics."""

from resa_utils.sae.config import ARCHITECTURES, METHODS, SAEConfig, TrainConfig
from resa_utils.sae.metrics import ce_loss_recovered, evaluate_sae, fvu, spliced_ce
from resa_utils.sae.model import SAE
from resa_utils.sae.train import (TRAINERS, CacheJob, TrainResult, make_trainer, train_and_evaluate,
                                  train_cache_job, train_sae)

__all__ = ["ARCHITECTURES", "CacheJob", "METHODS", "SAE", "SAEConfig", "TRAINERS", "TrainConfig",
           "TrainResult", "ce_loss_recovered", "evaluate_sae", "fvu", "make_trainer", "spliced_ce",
           "train_cache_job",
           "train_and_evaluate", "train_sae"]
