"""Shared code for the five paper notebooks: models, activations, SAEs, tracking, runner.

Import submodules directly (`from resa_utils.sae import train_sae`); nothing heavy runs here.
"""

__version__ = "0.1.0"
