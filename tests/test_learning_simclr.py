"""SimCLR learns on real CIFAR-10 (slow)."""

from __future__ import annotations

import pytest

from .learning import assert_learns


@pytest.mark.slow
def test_simclr_beats_random_init_on_cifar10(tmp_path) -> None:
    """SimCLR's trained backbones' mean kNN beats the mean of ten random-init backbones by its margin.

    6 epochs of 5,000 training images (114 steps of 256), tiny backbone, kNN on 2,000 test images
    (tests/learning.py SETTINGS["simclr"]). Pinned: a 2,048-wide projector without BN on its
    output, the default when the margin was first measured (the method now defaults to the
    official head: the backbone's width, output BN). Seeds, measured gains, spread and margin:
    EVIDENCE["simclr"] in tests/learning.py (the margin is at least 3 standard errors of the
    spread; tests/test_learning_evidence.py checks it against benchmarks/results/learning.jsonl)."""
    assert_learns("simclr", tmp_path)
