"""The small-compute table: every registered method at the same small compute (issue 17).

Each method trains with its own recipe scaled to the setting (the CPU-scale settings its slow
learning test measured: heads, learning rate, batch), on the same data (CIFAR-10 training images),
the same backbone (the tiny convnet; a tiny ViT for MAE and for any ``--vit`` rows) and the same
wall-clock budget of training steps on this machine, at the engine's default precision (its best
on the device). For each method and seed: the steps done, the images seen, the final and the best
kNN (k 200, T 0.1, bank: the training images) on the same 2,000 test images, the random-init kNN,
``output_std`` x sqrt(d) where the method logs it (the collapse monitor, on 1,000 test images) and
the peak memory.

The budget is turned into steps up front, so the learning-rate schedule ends with the budget:
each run first times ``--calibration-steps`` steps of the engine's loop (after 5 warm-up steps) and trains
``floor(budget / step time)`` steps, over ``round(steps / steps per epoch)`` epochs (at least 1; the
cosine is cut within half an epoch of its end). kNN runs after every ``--eval-every`` epochs and
at the end; its time is not part of the budget. Each run measures its training time (``train_s``:
the run's wall time less its kNN passes); when that misses the budget by more than 15% (a short
calibration can be off), the run is repeated once with the steps scaled by its measured rate. Every (method, seed) runs in its own process, so
its peak memory is its own.

    python benchmarks/method_table.py --budget 600 --seeds 0 1            # the table (hours)
    python benchmarks/method_table.py --budget 10 --methods simclr mae --seeds 0 --no-write   # a smoke run
    python benchmarks/method_table.py --budget 600 --vit dino moco_v3      # add ViT rows for these

Rows are appended to benchmarks/results/method_table.jsonl; the Markdown table goes to stdout and,
with ``--benchmarks``, into BENCHMARKS.md's "small-compute" section.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA_DIR, hardware, peak_memory_mib, update_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "method_table.jsonl"
from tests.learning import TINY_VIT  # noqa: E402  (ViT-Tiny cut to 4 blocks of 96 channels, patch 4)
# Each method's recipe at CPU scale: the settings of its slow learning test (tests/test_*.py), where
# the paper's ImageNet values did not move the tiny network (reasons in those tests' docstrings).
SETTINGS: dict[str, dict[str, Any]] = {
    # Where no batch_size is given, the engine picks its CPU default (estimate.fit_defaults: 64 here).
    "simclr": {},  # tests/test_learning_simclr.py: the method's defaults
    "moco_v1": {"method_args": {"ema_momentum": 0.99}},  # tests/test_moco.py
    "moco_v2": {"method_args": {"ema_momentum": 0.99}},
    "moco_v3": {},
    "instdisc": {"batch_size": 128, "lr": 0.06, "weight_decay": 5e-4, "warmup_epochs": 0,  # tests/test_instdisc.py
                 "method_args": {"loss": "softmax", "temperature": 0.1}},
    "cmc": {"batch_size": 128},  # tests/test_cmc.py
    "cpc": {"batch_size": 64, "lr": 0.002},  # tests/test_cpc.py
    "byol": {"batch_size": 64, "lr": 1.0, "method_args": {"proj_hidden_dim": 1024, "pred_hidden_dim": 1024}},  # tests/test_byol.py
    "simsiam": {"batch_size": 64, "lr": 0.2, "method_args": {  # tests/test_simsiam.py
        "proj_layers": 2, "proj_hidden_dim": 512, "proj_output_dim": 512, "pred_hidden_dim": 128}},
    "swav": {"lr": 0.15, "augment": {"num_local": 2}, "method_args": {"epsilon": 0.03}},  # tests/test_swav.py
    "dino": {"batch_size": 64, "augment": {"num_local": 2}},  # tests/test_dino.py
    "barlow_twins": {"lr": 1.0, "augment": {"crop_scale": (0.2, 1.0)}, "method_args": {"scale_loss": 0.1}},  # tests/test_barlow_vicreg.py
    "vicreg": {"method_args": {"proj_hidden_dim": 1024, "proj_output_dim": 1024}},  # tests/test_barlow_vicreg.py
    "mae": {"backbone": "vit_tiny", "backbone_args": TINY_VIT, "batch_size": 64, "lr": 0.004,  # tests/test_mae.py
            "method_args": {"decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4}},
}


def settings_for(method: str, vit: bool) -> dict[str, Any]:
    values = dict(SETTINGS.get(method, {}))
    if vit:
        values.update(backbone="vit_tiny", backbone_args=TINY_VIT)
    return values


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One (method, seed): calibrate the step time, train for the budget, probe."""
    import torch

    from selfsup.engine import TrainConfig, Trainer
    from selfsup.runs import read_metrics
    from selfsup.engine.trainer import pick_device
    from tests.learning import output_std

    class KnnTimedTrainer(Trainer):
        """The trainer, timing each kNN pass so that the training time can be told apart."""

        knn_seconds: list[float]

        def knn(self) -> dict[str, float] | None:
            started = time.perf_counter()
            try:
                return super().knn()
            finally:
                self.knn_seconds = [*getattr(self, "knn_seconds", []), time.perf_counter() - started]

    settings = settings_for(args.one, args.vit_row)
    values = dict(
        method=args.one, backbone="tiny", data="cifar10", data_dir=str(args.data_dir), train_subset=args.train_subset,
        test_subset=args.test_subset, seed=args.seed, progress=False, device=args.device, epochs=1,
        **({"precision": args.precision} if args.precision else {}),
    )
    values.update(settings)
    with tempfile.TemporaryDirectory(prefix=f"table-{args.one}-") as tmp:
        # The step time of the engine's own loop (logging and hooks included): a short run of
        # 5 warm-up + --calibration-steps steps, timed by its logged intervals after the first.
        warmup = 5
        calibration = Trainer(TrainConfig(**{**values, "run_dir": tmp, "name": "calibration", "eval_every": None,
                                             "max_steps": warmup + args.calibration_steps, "log_every": warmup}))
        steps_per_epoch = calibration.steps_per_epoch
        done = calibration.fit()
        rates = [r["images_per_s"] for r in read_metrics(done["run_dir"]) if "images_per_s" in r][1:]
        step_s = done["batch_size"] / statistics.fmean(rates)
        del calibration
        steps = max(1, int(args.budget / step_s))
        # A short calibration can be off (first steps of a shape, a busy moment): when the training
        # time the run measured misses the budget by more than 15%, the run is repeated once with
        # the steps scaled by the measured rate, and the row says so (attempts = 2).
        for attempt in (1, 2):
            epochs = max(1, round(steps / steps_per_epoch))
            config = TrainConfig(**{**values, "run_dir": tmp, "name": f"run{attempt}", "epochs": epochs,
                                    "max_steps": steps, "eval_every": args.eval_every})
            started = time.time()
            trainer = KnnTimedTrainer(config)
            summary = trainer.fit()
            elapsed = time.time() - started
            # The run's wall time (after the memory check, to the last step) less the kNN passes in
            # it: the training time the budget bought (the final kNN comes after wall_time_s).
            train_s = summary["wall_time_s"] - sum(trainer.knn_seconds[:-1])
            if abs(train_s - args.budget) <= 0.15 * args.budget:
                break
            steps = max(1, int(steps * args.budget / train_s))
        std = None
        if any("output_std" in r for r in read_metrics(summary["run_dir"])):
            value, dim = output_std(summary)
            std = value * math.sqrt(dim)
    resolved = config.resolve()
    return {
        "method": args.one, "backbone": resolved.backbone, "backbone_args": resolved.backbone_args, "seed": args.seed,
        "budget_s": args.budget, "step_s": round(step_s, 4), "steps": summary["steps"], "train_s": round(train_s, 1), "attempts": attempt,
        "images_seen": summary["steps"] * summary["batch_size"], "batch_size": summary["batch_size"], "epochs": epochs,
        "knn_final": summary["knn_top1"], "knn_best": summary["best_knn_top1"], "knn_random": summary["knn_random_top1"],
        "output_std_sqrt_d": std, "peak_mib": round(peak_memory_mib(pick_device(args.device)), 1),
        "precision": summary.get("precision"), "wall_s_with_knn": round(elapsed, 1), "settings": settings,
        "train_subset": args.train_subset, "test_subset": args.test_subset, "hardware": hardware(pick_device(args.device)),
        "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }


def percent(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (method, backbone): means over seeds (± the std over seeds where there are two or more)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["backbone"]), []).append(row)
    lines = [
        "| method | backbone | seeds | batch | steps | train s | images seen | kNN final % | kNN best % | random-init % | "
        "output_std x sqrt(d) | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(groups, key=lambda k: -statistics.fmean(r["knn_final"] for r in groups[k]))
    for method, backbone in order:
        group = groups[(method, backbone)]
        stds = [r["output_std_sqrt_d"] for r in group if r["output_std_sqrt_d"] is not None]
        arch = backbone if backbone != "vit_tiny" else "tiny ViT"
        lines.append(
            f"| {method} | {arch} | {len(group)} | {group[0]['batch_size']} | "
            f"{round(statistics.fmean(r['steps'] for r in group))} | {round(statistics.fmean(r['train_s'] for r in group))} | "
            f"{round(statistics.fmean(r['images_seen'] for r in group)):,} | "
            f"{percent([r['knn_final'] for r in group])} | {percent([r['knn_best'] for r in group])} | "
            f"{percent([r['knn_random'] for r in group])} | {f'{statistics.fmean(stds):.2f}' if stds else '-'} | "
            f"{max(r['peak_mib'] for r in group):,.0f} |"
        )
    first = rows[0]
    seeds = sorted({r["seed"] for r in rows})
    lines += [
        "",
        f"Budget {first['budget_s']:g} s of training per run ({first['precision']}), {first['hardware']}; "
        f"CIFAR-10 training images ({first['train_subset'] or 50000}), kNN (k 200, T 0.1) on {first['test_subset']} test images; "
        f"seeds {', '.join(map(str, seeds))}; rows with seeds = 1 are one seed. train s: the training time each run "
        f"measured (its kNN passes excluded); a run whose calibrated step count missed the budget by more than 15% was "
        f"repeated once at its measured rate ({sum(r.get('attempts', 1) == 2 for r in rows)} of {len(rows)} runs). "
        f"Settings per method: benchmarks/method_table.py (SETTINGS); every run: benchmarks/results/method_table.jsonl.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training per run")
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--vit", nargs="*", default=[], metavar="METHOD", help="also run these methods on the tiny ViT")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--train-subset", type=int, default=None, help="default: all 50,000 training images")
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=1, help="epochs between kNN evaluations (0: only at the end)")
    parser.add_argument("--calibration-steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="default: the engine's (its best on the device)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--from-results", action="store_true",
                        help="no training: the table from the newest recorded row of each (method, backbone, seed) at --budget")
    parser.add_argument("--no-write", action="store_true", help="print only; append nothing to the results")
    parser.add_argument("--benchmarks", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one (method, seed) in this process
    parser.add_argument("--vit-row", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    from selfsup.methods import available

    if args.from_results:
        newest: dict[tuple[str, str, int], dict[str, Any]] = {}
        for line in RESULTS.read_text().splitlines():
            row = json.loads(line)
            if row["budget_s"] == args.budget and "train_s" in row and (not args.methods or row["method"] in args.methods):
                newest[(row["method"], row["backbone"], row["seed"])] = row
        rows = list(newest.values())
        if not rows:
            raise SystemExit(f"no rows with a {args.budget:g} s budget and a measured train_s in {RESULTS}")
        table = markdown(rows)
        print(table)
        if args.benchmarks:
            update_section("small-compute", "## Every method at the same small compute\n\n" + table)
        return

    jobs = [(m, False) for m in (args.methods or available())] + [(m, True) for m in args.vit]
    rows = []
    for method, vit in jobs:
        for seed in args.seeds:
            command = [sys.executable, __file__, "--one", method, "--seed", str(seed), "--budget", str(args.budget),
                       "--test-subset", str(args.test_subset), "--eval-every", str(args.eval_every),
                       "--calibration-steps", str(args.calibration_steps), "--device", args.device,
                       "--data-dir", str(args.data_dir)]
            command += ["--train-subset", str(args.train_subset)] if args.train_subset else []
            command += ["--precision", args.precision] if args.precision else []
            command += ["--vit-row"] if vit else []
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                print(f"{method} seed {seed} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.no_write:
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    if rows:
        table = markdown(rows)
        print(table)
        if args.benchmarks:
            update_section("small-compute", "## Every method at the same small compute\n\n" + table)


if __name__ == "__main__":
    main()
