"""The training engine: config, loop, optimizers and schedules, checkpoints, logging, evaluation."""

from .config import TrainConfig, build_config
from .evaluate import evaluate, load_method
from .trainer import Trainer, build_method, build_recipe, train

__all__ = ["TrainConfig", "Trainer", "build_config", "build_method", "build_recipe", "evaluate", "load_method", "train"]
