"""The weighted kNN of InstDisc (Wu et al. 2018, arXiv 1805.01978, section 3.5): against a loop
transcription of eq. 8, and sharded across processes (each rank searching its own block of the
training features and merging the candidates) against the whole set."""

from __future__ import annotations

import math

import torch

from selfsup.eval.knn import knn_accuracy, knn_predict


def data(seed: int = 0, n_train: int = 37, n_test: int = 9, dim: int = 5, classes: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n_train, dim, generator=generator),
        torch.randint(0, classes, (n_train,), generator=generator),
        torch.randn(n_test, dim, generator=generator),
    )


def test_scores_match_eq_8_loop() -> None:
    train, labels, test = data()
    k, t, classes = 7, 0.1, 4
    scores = knn_predict(train, labels, test, classes, k, t)
    unit = lambda v: v / math.sqrt(sum(float(x) ** 2 for x in v))  # noqa: E731
    for q in range(test.shape[0]):
        sims = sorted(((float(unit(test[q]) @ unit(train[i])), int(labels[i])) for i in range(train.shape[0])), reverse=True)
        expected = [0.0] * classes
        for sim, label in sims[:k]:
            expected[label] += math.exp(sim / t)
        torch.testing.assert_close(scores[q], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_sharded_search_equals_the_whole_set() -> None:
    """Three shards of 13, 13 and 11 rows (k = 20 exceeds every shard): the merged neighbours of
    each shard's search give the same class scores as one search over all 37 rows."""
    train, labels, test = data(1)
    k, classes = 20, 4
    whole = knn_predict(train, labels, test, classes, k)
    blocks = [slice(0, 13), slice(13, 26), slice(26, 37)]
    candidates = []

    def capture(sim: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidates.append((sim, lab))
        return sim, lab

    for block in blocks:  # what each rank contributes
        knn_predict(train[block], labels[block], test, classes, k, merge=capture)

    def all_gather(sim: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([c[0] for c in candidates], 1), torch.cat([c[1] for c in candidates], 1)

    for block in blocks:  # every rank ends with the same scores, those of the whole set
        torch.testing.assert_close(knn_predict(train[block], labels[block], test, classes, k, merge=all_gather), whole)
    assert knn_accuracy(train, labels, test, labels[:9], classes, k) == knn_accuracy(
        train[blocks[0]], labels[blocks[0]], test, labels[:9], classes, k, merge=all_gather
    )
