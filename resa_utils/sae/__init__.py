"""Sparse autoencoders: inference model, one trainer per method, metrics."""

from .config import ARCHITECTURES, METHODS, SAEConfig, TrainConfig
from .metrics import ce_loss_recovered, evaluate_sae, fvu
from .model import SAE
from .train import TRAINERS, TrainResult, make_trainer, train_sae

__all__ = ["ARCHITECTURES", "METHODS", "SAE", "SAEConfig", "TRAINERS", "TrainConfig",
           "TrainResult", "ce_loss_recovered", "evaluate_sae", "fvu", "make_trainer", "train_sae"]
