"""Evaluation of representations: kNN and linear probes on frozen features."""

from .knn import center_crop, extract_features, knn_accuracy, knn_predict, topk_accuracy
from .linear import linear_probe

__all__ = ["center_crop", "extract_features", "knn_accuracy", "knn_predict", "linear_probe", "topk_accuracy"]
