"""Pretrain a method on CIFAR-10, then kNN and linear probes: one row of the CIFAR-10 table.

    python benchmarks/cifar10.py --method simclr --epochs 20 [--backbone resnet18] [--batch-size 512]
        [--eval-every 5] [--train-subset N] [--write]
    python benchmarks/cifar10.py --config byol_cifar10 --epochs 8 --write   # a bundled recipe, shortened

Runs the real engine (``selfsup.engine.Trainer``) with the method's defaults, records kNN top-1
(k=200, T=0.1) at the last epoch and the best over epochs (lightly's table reports the best),
a linear probe on frozen features of the final backbone, the random-init baseline, wall time,
images/s, peak memory and the hardware. With ``--write`` the row is appended to
benchmarks/results/cifar10.jsonl and the table in BENCHMARKS.md is rebuilt from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA_DIR, ROOT, hardware, peak_memory_mib, update_section  # noqa: E402

from selfsup.engine import TrainConfig, Trainer, build_config  # noqa: E402
from selfsup.engine.evaluate import probe_features  # noqa: E402
from selfsup.eval import linear_probe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cifar10.jsonl"


# Without --config: the method's defaults with these run settings. With --config the recipe's own
# values stand unless given on the command line.
PLAIN_DEFAULTS = {"method": "simclr", "backbone": "resnet18", "epochs": 20, "batch_size": 512, "eval_every": 5}


def run(args: argparse.Namespace) -> dict:
    given = {k: getattr(args, k) for k in PLAIN_DEFAULTS}
    if not args.config:
        given = {k: v if v is not None else PLAIN_DEFAULTS[k] for k, v in given.items()}
    label = args.config or given["method"]
    values = {
        **given, "data": "cifar10", "data_dir": args.data_dir,
        "train_subset": args.train_subset, "device": args.device, "compile": args.compile,
        "run_dir": args.run_dir, "name": f"{label}-e{given['epochs']}-{time.strftime('%Y%m%d-%H%M%S')}",
        "progress": not args.quiet, "seed": args.seed,
    }
    config: TrainConfig = build_config(args.config, values, args.overrides)
    if args.compress:
        config = compress(config, args.compress)
    trainer = Trainer(config)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    start = time.time()
    summary = trainer.fit()
    wall = time.time() - start
    peak = peak_memory_mib(trainer.device)
    linear = None
    if not args.no_linear and trainer.eval_sets is not None:
        bank, queries = trainer.eval_sets
        method = trainer.method.eval()
        with torch.no_grad():
            train_features = probe_features(method, trainer.config, trainer.image_size, bank, trainer.device)
            test_features = probe_features(method, trainer.config, trainer.image_size, queries, trainer.device)
        linear = linear_probe(train_features, bank.labels, test_features, queries.labels, bank.num_classes)["top1"]
    return {
        "method": config.method,
        "config": args.config,
        "backbone": trainer.config.backbone,
        "epochs": summary["epochs"],
        "batch_size": trainer.config.batch_size,
        "train_images": len(trainer.train_set),
        "knn_last": summary["knn_top1"],
        "knn_best": summary["best_knn_top1"],
        "knn_random": summary["knn_random_top1"],
        "linear": linear,
        "wall_min": round(wall / 60, 2),
        "images_per_s": summary["images_per_s"],
        "peak_memory_mib": round(peak),
        "hardware": hardware(trainer.device),
        "seed": config.seed,
        "date": time.strftime("%Y-%m-%d"),
        "run_dir": summary["run_dir"],
    }


# Fields of a recipe counted in epochs (besides epochs): compressed with them for a fixed budget.
EPOCH_FIELDS = ("queue_start_epoch", "freeze_prototypes_epochs", "freeze_last_layer_epochs")


def compress(config: TrainConfig, epochs: int) -> TrainConfig:
    """The recipe squeezed into ``epochs``: its warmup, lr milestones and the method's epoch-counted
    settings (SwAV's queue start and frozen prototypes, DINO's frozen last layer) scaled by
    epochs / the recipe's epochs, so that a fixed-budget run keeps the recipe's shape (the
    cosines follow the epochs by themselves)."""
    resolved = config.resolve()
    factor = epochs / resolved.epochs
    method_args = {
        k: (v * factor if k in EPOCH_FIELDS and isinstance(v, (int, float)) else v) for k, v in resolved.method_args.items()
    }
    return build_config(None, {
        **resolved.to_dict(), "epochs": epochs, "warmup_epochs": resolved.warmup_epochs * factor,
        "lr_milestones": [m * factor for m in resolved.lr_milestones], "method_args": method_args,
    })


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def rebuild_table() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else []
    lines = [
        "### CIFAR-10: pretrain, then kNN and linear probes",
        "",
        "`python benchmarks/cifar10.py --method M --epochs E --write`; kNN top-1 (k=200, T=0.1) on the 10,000 test images",
        "with the training set as the bank, at the last epoch and the best over epochs; linear probe on frozen features",
        "(100 epochs of SGD on cached features); random = the same kNN on the run's random-init backbone. One seed each.",
        "Short runs are labelled by their epochs: they are not the 200-epoch figures of the peers.",
        "",
        "| method | recipe | backbone | epochs | batch | kNN last | kNN best | random | linear | wall (min) | images/s | peak MiB | hardware | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        subset = "" if r["train_images"] == 50000 else f" ({r['train_images']:,} imgs)"
        lines.append(
            f"| {r['method']} | {r.get('config') or 'defaults'} | {r['backbone']} | {r['epochs']}{subset} | {r['batch_size']} | {pct(r['knn_last'])} | {pct(r['knn_best'])} | "
            f"{pct(r['knn_random'])} | {pct(r['linear'])} | {r['wall_min']} | {r['images_per_s']:,.0f} | {r['peak_memory_mib']:,} | {r['hardware']} | {r['date']} |"
        )
    lines += [
        "",
        "Peers, ResNet-18, batch 512, 200 epochs, kNN (lightly, one A6000): SimCLR 84.8, BYOL 86.8, MoCo v2 84.7, SwAV 84.2,",
        "DINO 81.3, SimSiam 76.4 (SimCLR took 87 min).",
    ]
    update_section("cifar10", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", help="default simclr (without --config)")
    parser.add_argument("--config", help="a bundled or YAML config to start from (its values stand unless given here)")
    parser.add_argument("--backbone", help="default resnet18 (without --config)")
    parser.add_argument("--epochs", type=int, help="default 20 (without --config)")
    parser.add_argument("--batch-size", type=int, help="default 512 (without --config)")
    parser.add_argument("--eval-every", type=int, help="default 5 (without --config)")
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--compress", type=int, metavar="EPOCHS",
                        help="run the recipe in EPOCHS epochs, its warmup, milestones and epoch-counted settings scaled alike")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-linear", action="store_true")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "benchmarks"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    row = run(args)
    print(json.dumps(row, indent=2))
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        rebuild_table()


if __name__ == "__main__":
    os.environ.setdefault("SELFSUP_OFFLINE", "1")
    main()
