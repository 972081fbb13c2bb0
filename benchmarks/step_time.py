"""Seconds per training step of a method's slow-test setting (tests/learning.py ``SETTINGS``), with
variants: what a learning test's minutes are made of. The whole step (batched augmentation,
forward, backward, optimizer, schedules) through ``Trainer.train_step`` on one fixed batch, after
two warm-up steps, at the process's intra-op threads (``OMP_NUM_THREADS=1`` for what one slow-suite
worker sees).

    OMP_NUM_THREADS=1 python benchmarks/step_time.py dino
    OMP_NUM_THREADS=1 python benchmarks/step_time.py dino --variant '{"method_args": {"hidden_dim": 512}}' \\
        --variant '{"augment": {"num_local": 0}}'

Each ``--variant`` updates the setting's ``method_args`` / ``augment`` / other fields (dicts merge).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from selfsup.engine import Trainer  # noqa: E402
from tests.learning import SETTINGS, learning_config  # noqa: E402


def seconds_per_step(method: str, variant: dict, steps: int) -> float:
    setting = copy.deepcopy(SETTINGS[method])
    for key, value in variant.items():
        setting[key] = {**setting.get(key, {}), **value} if isinstance(value, dict) else value
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(learning_config(method, Path(tmp), **setting))
        batch = next(iter(trainer.loader.epoch(1)))
        for _ in range(2):
            trainer.train_step(batch.images, batch.index)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch.images, batch.index)
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("--variant", action="append", default=[], help="JSON object updating the setting")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    for variant in [{}] + [json.loads(v) for v in args.variant]:
        seconds = seconds_per_step(args.method, variant, args.steps)
        print(json.dumps({"method": args.method, "variant": variant, "seconds_per_step": round(seconds, 3),
                          "threads": torch.get_num_threads(), "steps": args.steps}), flush=True)


if __name__ == "__main__":
    main()
