"""The ``selfsup`` command: thin wrappers that parse arguments and call the engine and evaluation.

User errors (:class:`~selfsup.errors.SelfsupError`) print one clear message and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from .commands import COMMANDS, add_command, add_eval, pct
from .errors import DataError, SelfsupError

EPILOG_TRAIN = """\
examples:
  selfsup train                                   # SimCLR on the built-in digits (~2 min on a CPU)
  selfsup train --data cifar10 --epochs 200       # SimCLR, ResNet-18, CIFAR-10 (simclr_cifar10.yaml)
  selfsup train --method byol --data cifar10      # BYOL with its bundled CIFAR-10 recipe (byol_cifar10.yaml)
  selfsup train --config simclr_cifar10 epochs=200 # the bundled recipe, shorter
  selfsup train --method byol --data cifar10 --dry-run   # print what the run would use, then exit
  selfsup train --config dino_imagenet --dry-run --json --assume-samples 1281167
  selfsup train --data ~/photos                   # your own folder: settings fit to this machine, an estimate first
  selfsup train --data ~/photos --init torchvision:resnet50.IMAGENET1K_V2   # continue from pretrained weights
  selfsup train --name myrun --resume             # continue a run from its last checkpoint
  selfsup train --config simclr_imagenet --devices 8   # the 8 GPUs of this machine (torchrun)
  torchrun --nproc-per-node 8 -m selfsup train --config simclr_imagenet   # the same; several machines: docs/distributed.md

key=value overrides set any config field (see the resolved config.yaml of a run);
method.<field>, augment.<field> and backbone.<arg> set the method's config, the
augmentation recipe and the backbone's arguments. Without --config, a run on cifar10,
cifar100 or digits starts from the method's bundled recipe for it when there is one
(selfsup/configs/<method>_cifar10.yaml; docs/recipes.md); the line it prints names it.
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", cmd_train, help="pretrain a backbone with a self-supervised method",
        description="Pretrain a backbone without labels; prints kNN accuracy against the random-init backbone.",
        epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="a YAML config file or the name of a bundled one (e.g. simclr_cifar10)")
    p.add_argument("--method", help="method name (see `selfsup methods`); default simclr")
    p.add_argument("--data", help="digits | cifar10 | cifar100 | a folder of images | a packed .npz; default digits")
    p.add_argument("--data-dir", help="folder searched first for built-in datasets")
    p.add_argument("--val-data", help="labelled folder for kNN monitoring of a folder source")
    p.add_argument("--val-fraction", type=float,
                   help="share of each class of a labelled folder held out for monitoring and probes (default 0.1)")
    p.add_argument("--backbone", help="backbone name (resnet18, resnet50, tiny, vit_small, ...; default: fits the machine)")
    p.add_argument("--init", help="continue from pretrained backbone weights: a torchvision/timm state dict (.pth, "
                   ".safetensors), a `selfsup export`, a run, or torchvision:resnet50.IMAGENET1K_V2 / timm:<model>")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (default: fits the machine and the data)")
    p.add_argument("--lr", type=float, help="base learning rate per 256 images")
    p.add_argument("--image-size", type=int, help="stored side of folder images (default 64)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--devices", type=int, metavar="N", help="train on N processes of this machine (one per GPU, or N "
                   "CPU processes with --device cpu), started with torchrun; --batch-size stays the global batch")
    p.add_argument("--name", help="run name (folder under --run-dir)")
    p.add_argument("--run-dir", help="parent folder of runs (default runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run --name from its newest good checkpoint")
    p.add_argument("--dry-run", action="store_true", help="build the method, optimizer, schedules and views, print "
                   "what the run would use and exit (nothing is trained or written)")
    p.add_argument("--json", action="store_true", help="with --dry-run: print it as one JSON object")
    p.add_argument("--assume-samples", type=int, metavar="N", help="with --dry-run: the training-set size, for data "
                   "that is not on this machine (ImageNet-1k: 1281167)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config field, e.g. lr=0.3 method.temperature=0.2")


# The flags of `train` that set the config field of the same name.
RUN_FIELDS = (
    "method", "data", "data_dir", "val_data", "val_fraction", "init", "backbone", "epochs", "batch_size", "lr",
    "image_size", "device", "name", "run_dir", "seed",
)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine import build_config, distributed, train
    from .engine.config import build_run_config

    if (args.json or args.assume_samples is not None) and not args.dry_run:
        raise SelfsupError("--json and --assume-samples describe a dry run: add --dry-run.")
    if args.devices is not None and not args.dry_run:
        if args.devices < 1:
            raise SelfsupError(f"--devices must be >= 1, got {args.devices}.")
        if args.devices > 1 and distributed.requested_world_size() == 1:
            return distributed.launch(args.devices, without_option(args.argv, "--devices"))
    values = {field: getattr(args, field) for field in RUN_FIELDS}
    config, recipe = build_run_config(args.config, values, args.overrides)
    if args.resume and not config.name:
        raise SelfsupError("--resume needs --name: the run to continue.")
    saved = Path(config.run_dir) / config.name / "config.yaml" if args.resume else None
    if saved is not None and saved.is_file() and not args.config:
        # Resume the run as it was configured (its config.yaml); flags and key=value given now override it.
        config, recipe = build_config(str(saved), values, args.overrides), f"the run's own config, {saved}"
    if args.dry_run:
        return _dry_run(config, recipe, args)
    if _rank() == 0:
        print(f"selfsup: {recipe}", file=sys.stderr)
    try:
        summary = train(config, resume=args.resume)
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(barrier=True)
    if _rank() == 0:
        _print_summary(summary)
    return 0


def _dry_run(config: Any, recipe: str, args: argparse.Namespace) -> int:
    """Build everything a run would use on the meta device and print it; train nothing."""
    from .engine.build import build, format_description, training_set_shape
    from .engine.estimate import fit_defaults

    config, note = fit_defaults(config)  # what the run would choose for this machine, as `train` does
    if note:
        print(note, file=sys.stderr)
    resolved = config.resolve()
    samples, image_size, assumed = training_set_shape(resolved, args.assume_samples)
    description = {"recipe": recipe, **build(resolved, samples, image_size, samples_assumed=assumed).describe()}
    print(json.dumps(description) if args.json else f"selfsup: {recipe}\n{format_description(description)}")
    return 0


def without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` minus the option ``flag`` and its value (``--flag V`` or ``--flag=V``): e.g. the
    command line each torchrun worker runs, without ``--devices N``."""
    out, skip = [], False
    for item in argv:
        if not skip and item != flag and not item.startswith(flag + "="):
            out.append(item)
        skip = not skip and item == flag  # the next item is the flag's value
    return out


def _print_summary(summary: dict[str, Any]) -> None:
    print("run: {run_dir}\n{method} / {backbone} on {data}: {epochs} epochs, {steps} steps, {wall_time_s:.0f} s, "
          "{images_per_s:.0f} images/s ({device})".format_map(summary))
    if summary.get("knn_top1") is not None:
        baseline = "the initial backbone" if summary.get("init") else "random-init"
        print(f"kNN top-1 (k={summary.get('knn_k')}): learned {pct(summary['knn_top1'])} vs {baseline} "
              f"{pct(summary['knn_random_top1'])} (best during training {pct(summary['best_knn_top1'])})")
        if summary.get("knn_bank"):
            print(f"  bank {summary['knn_bank']}; queries {summary['knn_queries']}")
    else:
        print("kNN: not evaluated (no labelled images held out; pass --val-data, or --val-fraction > 0 for a labelled folder)")


def _add_methods(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "methods", cmd_methods, help="list the methods, with one line each")
    add_command(sub, "backbones", cmd_backbones, help="list the backbones")


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import descriptions

    items = descriptions()
    width = max(map(len, items))
    for name, text in items.items():
        print(f"{name:<{width}}  {text}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from .nn import available_backbones

    print("\n".join(available_backbones()))
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="look at data and augmentations; pack datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{preview,pack,info}")
    q = add_command(dsub, "preview", cmd_preview, help="write a picture of images and their augmented views")
    q.add_argument("--data", default="digits")
    q.add_argument("--data-dir")
    q.add_argument("--recipe", default="simclr", help="simclr | byol | multicrop | cmc_lab | cpc_patches")
    q.add_argument("--image-size", type=int)
    q.add_argument("--count", type=int, default=8, help="how many images")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="views.png")
    q.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields, e.g. crop_scale=[0.2,1]")
    q = add_command(dsub, "pack", cmd_pack,
                    help="write any source into one packed .npz (encoded images + offsets + labels)")
    q.add_argument("source", help="digits | cifar10 | cifar100 | a folder | a packed .npz")
    q.add_argument("out", help="output .npz file")
    q.add_argument("--data-dir")
    q.add_argument("--image-size", type=int, help="resize (shorter side) and centre-crop folder images to this")
    q.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    q.add_argument("--quality", type=int, default=95)
    q = add_command(dsub, "info", cmd_info, help="describe a data source")
    q.add_argument("source")
    q.add_argument("--data-dir")


def cmd_preview(args: argparse.Namespace) -> int:
    from .augment import create_recipe
    from .augment.preview import preview_grid
    from .config import parse_overrides
    from .data import load_dataset

    dataset = load_dataset(args.data, "train", data_dir=args.data_dir, image_size=args.image_size, limit=max(args.count, 1), seed=args.seed)
    recipe = create_recipe(args.recipe, int(dataset.image_size), **parse_overrides(args.overrides))
    picture = preview_grid(dataset.images[: args.count], recipe, seed=args.seed, scale=max(1, 96 // int(dataset.image_size)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({args.count} images from {args.data}, recipe {args.recipe}: {recipe.num_views} views each)")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from contextlib import suppress

    from tqdm import tqdm

    from .data import load_dataset, write_packed
    from .data.splits import split_layout

    if Path(args.out).suffix != ".npz":  # before decoding anything
        raise DataError(f"the packed output must end in .npz, got '{args.out}'.")
    datasets = {"train": load_dataset(args.source, "train", data_dir=args.data_dir, image_size=args.image_size)}
    # a folder has one split (unless it has train/ and val/ or test/); another source may have no test split
    if not Path(args.source).is_dir() or split_layout(args.source) is not None:
        with suppress(DataError):
            datasets["test"] = load_dataset(args.source, "test", data_dir=args.data_dir, image_size=args.image_size)
    splits = {split: (_arrays(dataset), dataset.labels.numpy()) for split, dataset in datasets.items()}
    classes = next((dataset.classes for dataset in datasets.values() if dataset.classes), [])
    total = sum(map(len, datasets.values()))
    with tqdm(total=total, unit="img", desc=f"packing {args.source}", file=sys.stderr) as bar:
        out = write_packed(args.out, splits, classes, fmt=args.format, quality=args.quality, progress=bar.update)
    size = out.stat().st_size / 2**20
    print(f"wrote {out}: {', '.join(f'{s} {len(d)}' for s, d in datasets.items())} images, {size:.1f} MiB")
    return 0


def _arrays(dataset: Any) -> Iterable[Any]:
    """``dataset``'s images as uint8 arrays; a streamed folder's are decoded one at a time, as they are packed."""
    from .data.imageset import decode_to_array

    if dataset.streamed:
        return (decode_to_array(path, dataset.image_size) for path in dataset.paths or [])
    return dataset.images.numpy()


def cmd_info(args: argparse.Namespace) -> int:
    from .data import load_dataset

    dataset = load_dataset(args.source, "train", data_dir=args.data_dir)
    print(f"{args.source}: {len(dataset)} training images of {dataset.image_size} px, {dataset.num_classes} classes")
    if dataset.classes:
        print("classes: " + ", ".join(dataset.classes[:20]) + (" ..." if len(dataset.classes) > 20 else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised visual representation learning: every method on one engine."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add in (_add_train, add_eval, _add_methods, _add_data, *COMMANDS):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before, between and after the flags
    # (`selfsup train lr=0.1 --epochs 5 method.temperature=0.2`); argparse alone takes one group.
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except SelfsupError as exc:
        code = int(getattr(exc, "exit_code", 2))  # TrainingInterrupted: 130 / 143
        rank = _rank()
        if rank == 0 or code == 2:  # a stop for a signal is the same on every rank: said once
            where = f" [rank {rank}]" if rank else ""
            print(f"selfsup{where}: {'error: ' if code == 2 else ''}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
