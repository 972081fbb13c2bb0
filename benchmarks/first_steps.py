"""The first steps of a bundled recipe, one line a step: learning rate, loss and the loss's logged
terms (VICReg's invariance, variance and covariance, ...), to see where a recipe diverges.

    python benchmarks/first_steps.py --config vicreg_cifar10 --steps 9 warmup_epochs=0.1 [precision=fp32]

Trains ``--steps`` steps of the recipe (its own batch and backbone; ``key=value`` overrides as on the
command line, e.g. a shorter warmup) on CIFAR-10 with no kNN, logs every step, and prints the
metrics.jsonl rows; a non-finite loss ends the run with the engine's error, the rows before it stay.
BENCHMARKS.md, "First GPU session": VICReg's recipe under a short warmup.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA_DIR, hardware  # noqa: E402

from selfsup.engine import Trainer, build_config  # noqa: E402
from selfsup.errors import SelfsupError  # noqa: E402
from selfsup.runs import read_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a bundled recipe, e.g. vicreg_cifar10")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-steps-") as tmp:
        values = {"data": "cifar10", "data_dir": args.data_dir, "epochs": 1, "max_steps": args.steps, "eval_every": None,
                  "log_every": 1, "device": args.device, "run_dir": tmp, "name": "run", "progress": False}
        config = build_config(args.config, values, args.overrides)
        trainer = Trainer(config)
        print(f"{args.config} {' '.join(args.overrides)}: {args.steps} steps on {hardware(trainer.device)}, "
              f"{trainer.compute.reason}", flush=True)
        try:
            trainer.fit()
        except SelfsupError as error:
            print(f"stopped: {error}")
        for row in read_metrics(Path(tmp) / "run"):
            if "loss" in row:
                print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()
                                  if k in ("step", "lr", "loss", "invariance", "variance", "covariance")}))


if __name__ == "__main__":
    main()
