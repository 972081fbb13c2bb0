"""The slow learning tests' margins follow from recorded measurements (issue 16).

Each slow test of a method's learning trains at a few seeds and asserts that the mean kNN of the
trained backbones exceeds the mean kNN of ten random-init backbones by a margin
(``tests/learning.py``: ``EVIDENCE``, ``assert_learns``). These fast checks hold every margin to
the rule, at least 3 standard errors of the measured spread, and tie every measured value to a
row that ``benchmarks/learning.py`` wrote to ``benchmarks/results/``, so a figure in a test cannot
drift from the data it claims.
"""

from __future__ import annotations

import ast
import copy
import json
import statistics
from pathlib import Path

import pytest

from selfsup.methods import available

from .learning import BINOMIAL_SE, EVIDENCE, RANDOM_SEEDS, SETTINGS, Evidence

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def as_json(value: object) -> object:
    return json.loads(json.dumps(copy.deepcopy(value)))  # tuples as lists, as in the rows


def recorded_trained(method: str, threads: int | None = None, precision: str = "bf16") -> dict[int, list[float]]:
    """kNN top-1 (%) of the trained backbones of ``SETTINGS[method]`` (rows of learning.jsonl at
    ``precision``), by seed; only rows recorded with ``threads`` intra-op threads when it is given."""
    setting = as_json(SETTINGS[method])
    epochs, method_args = setting.pop("epochs", 6), setting.pop("method_args", {})
    by_seed: dict[int, list[float]] = {}
    for line in (RESULTS / "learning.jsonl").read_text().splitlines():
        row = json.loads(line)
        if (
            row.get("method") == method and row.get("precision") == precision and row.get("epochs") == epochs
            and row.get("method_args") == method_args and row.get("overrides") == setting
            and (threads is None or row.get("threads") == threads)
        ):
            by_seed.setdefault(row["seed"], []).append(round(100 * row["knn_top1"], 2))
    return by_seed


def recorded_random_init(method: str) -> dict[int, list[float]]:
    """kNN top-1 (%) of the random-init backbones of ``SETTINGS[method]`` (random_init.jsonl), by seed."""
    setting = as_json(SETTINGS[method])
    by_seed: dict[int, list[float]] = {}
    for line in (RESULTS / "random_init.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("method") == method and row.get("setting") == setting and not row.get("overrides"):
            by_seed.setdefault(row["seed"], []).append(round(100 * row["knn_random_top1"], 2))
    return by_seed


def test_every_method_has_a_learning_test_setting_and_its_evidence() -> None:
    assert set(SETTINGS) == set(available())
    assert set(EVIDENCE) == set(SETTINGS)


@pytest.mark.parametrize("method", sorted(EVIDENCE))
def test_margin_is_three_standard_errors_and_the_measurements_clear_it(method: str) -> None:
    evidence = EVIDENCE[method]
    assert len(evidence.trained) >= 3, "a spread needs at least 3 trained seeds"
    assert len(evidence.random_init) == len(RANDOM_SEEDS)
    assert 1 <= evidence.seeds <= len(evidence.trained)
    # a method that learns nothing (trained accuracy like a random init's) fails: 3 standard errors
    assert evidence.margin >= 3 * evidence.standard_error - 1e-9, (evidence.margin, 3 * evidence.standard_error)
    # the recorded seeds the test runs clear it by more than same-seed drift (about 0.3 points)...
    measured = statistics.mean(evidence.trained[: evidence.seeds]) - statistics.mean(evidence.random_init)
    assert measured - evidence.margin >= 0.5 - 1e-9, (measured, evidence.margin)
    # ...and so does the mean over every recorded seed (another set of seeds would pass too)
    assert evidence.expected_gain > evidence.margin, (evidence.expected_gain, evidence.margin)


@pytest.mark.parametrize("method", sorted(EVIDENCE))
def test_every_measured_value_is_a_recorded_row_of_the_test_setting(method: str) -> None:
    evidence = EVIDENCE[method]
    trained, random_init = recorded_trained(method, evidence.threads, evidence.precision), recorded_random_init(method)
    for seed, value in enumerate(evidence.trained):
        assert seed in trained, f"{method}: no {evidence.precision} row of its test setting at seed {seed} (threads {evidence.threads}) in learning.jsonl"
        assert any(abs(value - v) < 0.051 for v in trained[seed]), (method, seed, value, trained[seed])
    for seed, value in zip(RANDOM_SEEDS, evidence.random_init, strict=True):
        assert seed in random_init, f"{method}: no random-init row of its test setting at seed {seed} in random_init.jsonl"
        assert any(abs(value - v) < 0.051 for v in random_init[seed]), (method, seed, value, random_init[seed])


def test_the_rule_can_fail() -> None:
    """The old SwAV test (one seed, 1 point above its own random init) is far below the rule, and
    no spread counts as smaller than one accuracy's binomial error."""
    old_swav = Evidence(trained=(32.95, 33.65, 34.1), random_init=(29.35, 30.6, 32.75) + (30.9,) * 7, seeds=1, margin=1.0)
    assert old_swav.margin < 3 * old_swav.standard_error
    flat = Evidence(trained=(35.0,) * 3, random_init=(30.0,) * 10, seeds=1, margin=4.0)
    assert flat.trained_spread == flat.random_spread == BINOMIAL_SE


def test_every_slow_test_has_its_cost_for_the_schedule() -> None:
    """The slow suite starts its longest tests first (tests/conftest.py): a slow test missing from
    SLOW_SECONDS would run last, a stale name would order nothing."""
    from .conftest import SLOW_SECONDS

    slow = set()
    for path in Path(__file__).parent.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list):
                slow.add(node.name)
    assert slow and slow == set(SLOW_SECONDS), (slow ^ set(SLOW_SECONDS))
