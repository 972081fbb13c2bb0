"""The training engine: config, loop, optimizers and schedules, checkpoints, logging, evaluation."""

from .build import Built, build, build_method, build_recipe
from .config import TrainConfig, build_config
from .evaluate import evaluate
from .init import load_method
from .trainer import Trainer, train

__all__ = [
    "Built", "TrainConfig", "Trainer", "build", "build_config", "build_method", "build_recipe", "evaluate", "load_method",
    "train",
]
