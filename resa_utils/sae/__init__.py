"""Sparse autoencoders: inference model, one trainer per method, metrics."""

from .config import ARCHITECTURES, METHODS, SAEConfig, TrainConfig
from .metrics import ce_loss_recovered, evaluate_sae, fvu
from .model import SAE
from .metrics import spliced_ce
from .train import TRAINERS, CacheJob, TrainResult, make_trainer, train_and_evaluate, train_cache_job, train_sae

__all__ = ["ARCHITECTURES", "CacheJob", "METHODS", "SAE", "SAEConfig", "TRAINERS", "TrainConfig",
           "TrainResult", "ce_loss_recovered", "evaluate_sae", "fvu", "make_trainer", "spliced_ce",
           "train_and_evaluate", "train_sae"]
