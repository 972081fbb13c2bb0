"""One row of BENCHMARKS.md's "Learning on CIFAR-10 at CPU scale" table: the slow tests' harness
(tests/learning.py: tiny backbone on a CIFAR-10 subset, weighted kNN k=200 T=0.1 on 2,000 test
images against the random-init backbone of the same seed) with any setting, printed as one JSON
line and appended to benchmarks/results/learning.jsonl.

    python benchmarks/learning.py METHOD --seed 0 --epochs 60 [--method-args JSON] [--overrides JSON]
    python benchmarks/learning.py simsiam --collapse 100   # SimSiam's Figure 2 row: 100 steps with and without stop-gradient
    e.g. python benchmarks/learning.py instdisc --epochs 60 \
        --method-args '{"loss": "softmax", "temperature": 0.1}' \
        --overrides '{"train_subset": 1000, "batch_size": 128, "lr": 0.06, "weight_decay": 5e-4, "warmup_epochs": 0}'

Records the final and random-init kNN top-1, their difference (the gain the tests assert), the
kNN at each ``eval_every`` epoch, the first and last logged losses, the wall time and, for BYOL,
SimSiam, SwAV and DINO, the std of the normalized embedding (SimSiam's collapse monitor, with d;
tests/learning.py::output_std).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import hardware  # noqa: E402

from selfsup.engine.hardware import choose_compute  # noqa: E402
from selfsup.runs import read_metrics  # noqa: E402
from tests.learning import learning_run, output_std  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "learning.jsonl"
RANDOM_RESULTS = ROOT / "benchmarks" / "results" / "random_init.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--method-args", default="{}", help="JSON object: the method's config fields")
    parser.add_argument("--overrides", default="{}", help="JSON object: TrainConfig fields (train_subset, batch_size, lr, ...)")
    parser.add_argument("--collapse", type=int, metavar="STEPS",
                        help="simsiam only: the output std x sqrt(d) after STEPS steps with and without stop-gradient "
                        "(tests/test_simsiam.py's miniature of Figure 2)")
    parser.add_argument("--test-settings", action="store_true",
                        help="train with the method's slow-test setting (tests/learning.py SETTINGS; --epochs, "
                        "--method-args and --overrides then update it)")
    parser.add_argument("--random-init", type=int, nargs="+", metavar="SEED",
                        help="no training: the kNN of the random-init backbones of the test setting at these seeds "
                        "(the reference the slow tests compare against), into results/random_init.jsonl")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.collapse:
        from tests.test_simsiam import output_std_after_training

        start = time.time()
        row = {"method": "simsiam", "collapse_steps": args.collapse,
               **{f"std_sqrt_d_stop_gradient_{sg}": output_std_after_training(sg, args.collapse) for sg in (True, False)},
               "precision": choose_compute("auto", True, torch.device("cpu")).precision, "threads": torch.get_num_threads(),
               "seconds": round(time.time() - start, 1), "hardware": hardware("cpu"), "date": time.strftime("%Y-%m-%d")}
        return write(row, args.no_write)
    if args.random_init:
        from tests.learning import SETTINGS, random_init_top1

        overrides = json.loads(args.overrides)
        precision = choose_compute(overrides.get("precision", "auto"), True, torch.device("cpu")).precision
        for seed in args.random_init:
            start = time.time()
            with tempfile.TemporaryDirectory(prefix=f"random-{args.method}-") as tmp:
                top1 = random_init_top1(args.method, Path(tmp), seed, **overrides)
            row = {"method": args.method, "seed": seed, "setting": SETTINGS[args.method], "overrides": overrides,
                   "knn_random_top1": top1, "precision": precision, "commit": commit(), "seconds": round(time.time() - start, 1),
                   "hardware": hardware("cpu"), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
            write(row, args.no_write, RANDOM_RESULTS)
        return
    method_args, overrides = json.loads(args.method_args), json.loads(args.overrides)
    if args.test_settings:
        from tests.learning import SETTINGS

        base = copy.deepcopy(SETTINGS[args.method])
        method_args = {**base.pop("method_args", {}), **method_args}
        overrides = {**base, **overrides}
        if "--epochs" not in sys.argv:
            args.epochs = overrides.pop("epochs", args.epochs)
        overrides.pop("epochs", None)

    start = time.time()
    with tempfile.TemporaryDirectory(prefix=f"learning-{args.method}-") as tmp:
        summary = learning_run(args.method, Path(tmp), epochs=args.epochs, seed=args.seed, method_args=method_args, **overrides)
        records = read_metrics(summary["run_dir"])
        std = None
        if args.method in ("byol", "simsiam", "swav", "dino", "barlow_twins", "vicreg"):
            value, dim = output_std(summary)
            std = {"std": value, "dim": dim, "std_sqrt_d": value * dim**0.5}
    losses = [r["loss"] for r in records if "loss" in r]
    row = {
        "method": args.method, "seed": args.seed, "epochs": args.epochs, "method_args": method_args,
        "overrides": overrides, "test_settings": args.test_settings, "knn_k": summary.get("knn_k"),
        "knn_top1": summary["knn_top1"], "knn_random_top1": summary["knn_random_top1"],
        "gain": summary["knn_top1"] - summary["knn_random_top1"],
        "knn_by_epoch": [(r.get("epoch"), r["knn_top1"]) for r in records if "knn_top1" in r],
        "loss_first": losses[:1], "loss_last": losses[-1:], "projection": std,
        "precision": summary.get("precision"), "channels_last": summary.get("channels_last"), "commit": commit(),
        "seconds": round(time.time() - start, 1), "hardware": hardware("cpu"),
        # intra-op threads: bf16 reductions split by thread, so a seed trains differently at 1 thread
        # (the slow suite's xdist workers) and 2 (SimSiam seed 0: 34.25% against 35.95%)
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }
    write(row, args.no_write)


def commit() -> str | None:
    """The checked-out commit (with "+" when the tree has changes): which code made a row."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "selfsup"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def write(row: dict, print_only: bool, path: Path | None = None) -> None:
    print(json.dumps(row))
    if not print_only:
        path = path or RESULTS
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
