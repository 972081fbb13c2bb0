"""Subcommands for using a trained representation: ``eval knn|linear|finetune``, ``attention``,
``compare``, ``report``, ``export``, ``embed`` and ``neighbors``.

:mod:`selfsup.cli` adds them to its parser from :data:`COMMANDS` (and :func:`add_eval`); this
module imports nothing of the command line. Like the rest of it these are thin: the work is in
``selfsup.engine`` and ``selfsup.eval``. Heavy imports happen inside the commands, so
``selfsup --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DataError, SelfsupError


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _accuracies(scores: dict[str, float]) -> str:
    """A probe's accuracies as printed: ``top-1 X%, top-5 Y%``."""
    return f"top-1 {pct(scores['top1'])}, top-5 {pct(scores['top5'])}"


def add_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], **kwargs: Any
) -> argparse.ArgumentParser:
    """``sub.add_parser(name, **kwargs)``, set to run ``func`` with the parsed arguments."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(func=func)
    return p


# -- eval knn | linear | finetune -----------------------------------------------------------------
PROBES = {
    "knn": "weighted kNN on frozen features (T=0.1)",
    "linear": "linear probe on frozen features",
    "finetune": "fine-tune the whole backbone with a linear classifier",
}
# The options of `eval finetune` passed on as evaluate(finetune_args=...), by their dest.
FINETUNE_OPTIONS = ("epochs", "batch_size", "lr", "backbone_lr_ratio", "weight_decay", "max_steps")


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run: knn or linear probe on frozen features, or fine-tuning")
    esub = p.add_subparsers(dest="probe", required=True, metavar="{knn,linear,finetune}")
    for probe, text in PROBES.items():
        description = f"{text}, beside the same probe on the random-init backbone."
        if probe == "finetune":
            description = (
                "Fine-tune the representation and a linear head with labels (random resized crop + flip, SGD "
                "with Nesterov momentum, cosine schedule, a lower learning rate for the backbone), beside the "
                "random-init backbone trained the same way ('pretrained X%% vs from scratch Y%%')."
            )
        q = add_command(esub, probe, cmd_eval, help=text, description=description)
        q.add_argument("run", help="a run directory or a checkpoint file")
        q.add_argument("--data", help="labelled source the probe learns from or searches (default: the run's data)")
        q.add_argument("--test-data", help="labelled source the probe is scored on (default: the images --data holds "
                       "out: its test split, val/ or test/ folder, or the held-out fraction; naming the same source "
                       "as --data scores its own images, with a warning)")
        q.add_argument("--val-fraction", type=float, help="held-out share of each class of a folder (default: the run's)")
        q.add_argument("--data-dir")
        q.add_argument("--device", default="auto")
        q.add_argument("--train-subset", type=int, help="use a fixed random subset of the training split")
        q.add_argument("--test-subset", type=int, help="use a fixed random subset of the test split")
        baseline = "from-scratch" if probe == "finetune" else "random-init"
        q.add_argument("--no-baseline", action="store_true", help=f"skip the {baseline} baseline")
        q.add_argument("--json", action="store_true", help="print the result as JSON")
        if probe == "knn":
            q.add_argument("--k", type=int, help="neighbours (default: the run's, or min(200, bank images per class))")
            q.add_argument("--temperature", type=float, default=0.1)
        elif probe == "linear":
            q.add_argument("--epochs", type=int, default=100, help="epochs of the linear classifier")
        else:
            q.add_argument("--epochs", type=int, default=30)
            q.add_argument("--batch-size", type=int, default=256)
            q.add_argument("--lr", type=float, default=0.1, help="the head's learning rate per 256 images (default 0.1)")
            q.add_argument("--backbone-lr-ratio", type=float, default=0.1,
                           help="the backbone's learning rate as a fraction of the head's (default 0.1; 0 freezes it)")
            q.add_argument("--weight-decay", type=float, default=5e-4)
            q.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
        if probe != "knn":
            group = q.add_mutually_exclusive_group()
            group.add_argument("--labels-per-class", type=int, metavar="N",
                               help="train on a fixed class-balanced subset of N labelled images per class")
            group.add_argument("--label-fraction", type=float, metavar="F",
                               help="train on a fixed class-balanced fraction of the labels, e.g. 0.01 or 0.1 (SimCLR/BYOL)")


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate

    if args.probe == "knn":
        options: dict[str, Any] = dict(k=args.k, temperature=args.temperature)
    elif args.probe == "linear":
        options = dict(linear_epochs=args.epochs)
    else:
        finetune_args = {key: getattr(args, key) for key in FINETUNE_OPTIONS}
        options = dict(finetune_args={**finetune_args, "progress": not args.json})
    result = evaluate(
        args.run, probe=args.probe, data=args.data, test_data=args.test_data, val_fraction=args.val_fraction,
        data_dir=args.data_dir, device=args.device, train_subset=args.train_subset, test_subset=args.test_subset,
        baseline=not args.no_baseline, labels_per_class=getattr(args, "labels_per_class", None),
        label_fraction=getattr(args, "label_fraction", None), **options,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    learned, random = result["learned"], result.get("random")
    name = {"knn": f"knn (k={result.get('k')})", "finetune": "fine-tune"}.get(args.probe, args.probe)
    print(f"{name}: {'bank' if args.probe == 'knn' else 'trained on'} {result['bank']}; scored on {result['queries']}")
    if args.probe == "finetune":
        scratch = "from the initial backbone" if result.get("baseline") != "random-init" else "from scratch"
        versus = f"  vs {scratch} {_accuracies(random)}" if random else ""
        print(f"fine-tune ({result['train_images']} labelled images): pretrained {_accuracies(learned)}{versus}")
    else:
        versus = f"  ({result['baseline']}: {_accuracies(random)})" if random else ""
        print(f"{name}: {_accuracies(learned)}{versus}")
    return 0


# -- attention ------------------------------------------------------------------------------------
def add_attention(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "attention", cmd_attention, help="picture of a ViT run's last-layer [CLS] attention heads over an image",
        description="Render the last block's [CLS] self-attention, per head, over an image (the DINO paper's figures).",
    )
    p.add_argument("run", help="a run directory or a checkpoint file (ViT backbone)")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--out", default="attn.png", help="output PNG")
    p.add_argument("--size", type=int, help="side the image is resized to (default: the run's image size)")
    p.add_argument("--device", default="auto")


def cmd_attention(args: argparse.Namespace) -> int:
    import torch

    from .data.imageset import decode_to_array
    from .engine import load_method
    from .eval.attention import cls_attention, patch_size, render_attention

    method, config, image_size = load_method(args.run, args.device)
    backbone = method.eval_backbone
    patch = patch_size(backbone)  # refuses non-ViT backbones
    size = max(patch, (args.size or image_size) // patch * patch)
    try:
        image = decode_to_array(args.image, size)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read --image '{args.image}': {exc}") from None
    device = next(method.parameters()).device
    attention = cls_attention(backbone, method.eval_transform(torch.from_numpy(image)[None].to(device)))
    out = render_attention(image, attention[0], args.out, title=f"{config.method} / {backbone.arch}: last-layer [CLS] attention")
    print(f"wrote {out} ({attention.shape[1]} heads, {attention.shape[2]}x{attention.shape[3]} patches of {patch} px)")
    return 0


# -- compare --------------------------------------------------------------------------------------
def add_compare(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "compare", cmd_compare, help="one table of the probes of several runs (Markdown, CSV)",
        description="Compare runs: method, backbone, epochs, kNN (last and best during training, random-init), "
        "linear probe and wall time, from each run's summary.json, metrics.jsonl and evals.jsonl. Probes "
        "missing there can be computed with --probe.",
    )
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV (accuracies as fractions)")
    p.add_argument("--probe", action="append", choices=("knn", "linear"), default=[],
                   help="compute this probe now for every run (repeatable); results are recorded in the runs")
    p.add_argument("--data", help="labelled source for --probe (default: each run's data)")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--test-subset", type=int)


def cmd_compare(args: argparse.Namespace) -> int:
    from .eval.report import markdown_table, read_run, run_row, write_csv

    rows = []
    for run_dir in args.runs:
        row = run_row(read_run(run_dir))
        for probe in args.probe:
            from .engine import evaluate

            result = evaluate(run_dir, probe=probe, data=args.data, data_dir=args.data_dir, device=args.device,
                              train_subset=args.train_subset, test_subset=args.test_subset)
            random = result.get("random") or {}
            if probe == "knn":
                row.update(knn_last=result["learned"]["top1"], knn_random=random.get("top1"), knn_k=result["k"])
            else:
                row.update(linear=result["learned"]["top1"], linear_random=random.get("top1"))
        rows.append(row)
    print(markdown_table(rows))
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv)}", file=sys.stderr)
    return 0


# -- report ---------------------------------------------------------------------------------------
def add_report(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "report", cmd_report, help="write RUN/report/index.html: curves, embedding map, neighbours, augmentations",
        description="Write an offline HTML report of a run with PNG figures: loss / learning-rate / kNN curves, a "
        "2-D map of test embeddings by class, a nearest-neighbour retrieval grid, the augmentation preview, "
        "attention maps for ViTs, the probe results and the config.",
    )
    p.add_argument("run", help="a run directory (or a checkpoint inside one)")
    p.add_argument("--data", help="labelled source for the pictures (default: the run's data)")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-subset", type=int, default=10000, help="training images searched for neighbours")
    p.add_argument("--test-subset", type=int, default=1000, help="test images in the embedding map")
    p.add_argument("--map", choices=("auto", "umap", "tsne", "pca"), default="auto", dest="map_algorithm")
    p.add_argument("--queries", type=int, default=8, help="rows of the retrieval grid")
    p.add_argument("--k", type=int, default=8, help="neighbours per query")


def cmd_report(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .engine import build_recipe, load_method
    from .engine.checkpoint import CheckpointError
    from .engine.evaluate import eval_datasets
    from .engine.hardware import autocast_dtype, pick_device
    from .eval.report import write_report

    path = Path(args.run)
    device = pick_device(args.device)
    notes: list[str] = []
    method = recipe = train = test = config = method_images = attention = None
    try:
        method, config, image_size = load_method(path, device)
    except CheckpointError as exc:
        notes.append(f"No pictures of the representation: {exc}")
    if method is not None:
        recipe = build_recipe(config, method, image_size)
        try:
            train, test = eval_datasets(config, args.data, args.data_dir, image_size, args.test_subset, args.train_subset)
        except DataError as exc:
            notes.append(str(exc))
            train = load_dataset(args.data or config.data, "train", data_dir=args.data_dir or config.data_dir,
                                 image_size=image_size, limit=8, seed=config.seed)
        attention = _attention_hook(method, test if test is not None else train, device, notes)
        method_images = _method_images(method, test if test is not None else train)
    # a checkpoint file inside a run folder: the report goes to the run
    run_dir = path.parent.parent if path.is_file() and (path.parent.parent / "config.yaml").is_file() else path
    page = write_report(
        run_dir, method=method, recipe=recipe, train=train, test=test, device=device,
        crop_size=recipe.views[0].size if recipe is not None else None,
        autocast_dtype=autocast_dtype(config.precision, device) if config is not None else None,
        map_algorithm=args.map_algorithm, queries=args.queries, k=args.k, attention=attention,
        method_images=method_images, notes=notes,
    )
    print(f"wrote {page}")
    return 0


def _method_images(method: Any, dataset: Any, count: int = 6) -> Any:
    """The method's own pictures of ``count`` images (``Method.report_images``: MAE's
    reconstructions), or None when it has none."""
    if getattr(dataset, "images", None) is None:
        return None
    import torch

    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            return method.report_images(dataset.images[:count].to(next(method.parameters()).device))
    finally:
        method.train(was_training)


def _attention_hook(method: Any, dataset: Any, device: Any, notes: list[str], count: int = 4) -> Any:
    """For ViT backbones: a function drawing DINO-style [CLS] attention maps of the last block
    (``selfsup.eval.attention``) for ``count`` images into the report folder."""
    backbone = getattr(method, "eval_backbone", getattr(method, "backbone", None))
    if not str(getattr(backbone, "arch", "")).startswith("vit"):
        return None
    if getattr(dataset, "images", None) is None:
        notes.append("Attention maps are not drawn: the images are streamed, not in memory.")
        return None
    def draw(out_dir: Path) -> list[tuple[str, str]]:
        import torch

        from .eval.attention import cls_attention, patch_size, render_attention
        from .eval.knn import center_crop

        patch = patch_size(backbone)
        side = dataset.images.shape[1] // patch * patch  # the attention needs whole patches
        images = center_crop(dataset.images[:count], side)
        with torch.no_grad():
            maps = cls_attention(backbone, method.eval_transform(images.to(device)))
        for i in range(len(images)):
            render_attention(images[i].cpu().numpy(), maps[i], out_dir / f"attention_{i}.png")
        return [(f"attention_{i}.png", f"where the [CLS] token of the last block attends, per head and averaged "
                 f"(image {i}, {patch} px patches)") for i in range(len(images))]

    return draw


# -- export ---------------------------------------------------------------------------------------
def add_export(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "export", cmd_export, help="write the backbone as .safetensors with torchvision or timm key names",
        description="Export a run's backbone so that a plain torchvision/timm model loads it with "
        "load_state_dict(strict=True), without selfsup. The file's metadata holds the lines that build the plain "
        "model (and patch the CIFAR stem when the backbone has one) and the preprocessing.",
    )
    p.add_argument("run", help="a run directory or a checkpoint file")
    p.add_argument("--format", choices=("torchvision", "timm", "selfsup"), default="torchvision", dest="fmt",
                   help="key names of torchvision.models.resnetN(), of timm.create_model(...), or selfsup's own")
    p.add_argument("--out", default="backbone.safetensors", help="output .safetensors file")
    p.add_argument("--encoder", help="which backbone of the method to export, as an attribute path (e.g. "
                   "backbone.body.encoders.0 for CMC's L encoder); default: the one its probes use")


def cmd_export(args: argparse.Namespace) -> int:
    from . import __version__
    from .api import find_encoder, uses_own_representation
    from .engine import build_recipe, load_method
    from .engine.checkpoint import resolve_checkpoint
    from .eval.export import IMAGENET_MEAN, IMAGENET_STD, ExportError, export_backbone, read_export
    from .methods import Method
    from .nn.backbones import Backbone

    checkpoint = resolve_checkpoint(args.run)
    method, config, image_size = load_method(checkpoint, "cpu")
    backbone = find_encoder(method, args.encoder)
    if args.encoder is None and uses_own_representation(method):
        print(f"selfsup: note: {method.name}'s probes use more than its backbone (its own representation, e.g. a "
              "pooled patch grid); this file holds the backbone only. Pick another with --encoder.", file=sys.stderr)
    crop = build_recipe(config, method, image_size).views[0].size
    preprocess = {"image_size": image_size, "crop_size": crop, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if type(method).eval_transform is not Method.eval_transform:
        preprocess["custom"] = f"{method.name} turns images into its input with its own eval_transform, not mean/std alone"
    extra = {"method": method.name, "encoder": args.encoder or "eval_backbone", "source": str(checkpoint),
             "selfsup_version": __version__}
    name = config.backbone if backbone.arch == method.backbone.arch else backbone.arch
    try:
        out = export_backbone(backbone, args.fmt, args.out, preprocess, extra, name=name)
    except ExportError as exc:
        choices = [n for n, m in method.named_modules() if isinstance(m, Backbone) and n and m is not backbone]
        raise ExportError(f"{exc} The method's backbones: {', '.join(choices) or 'none other'}.") from None
    _, metadata = read_export(out)
    print(f"wrote {out} ({backbone.arch}, {args.fmt} key names, {backbone.feature_dim}-d features)")
    print("load it without selfsup:\n  " + metadata["usage"].replace("\n", "\n  "))
    return 0


# -- embed / neighbors ----------------------------------------------------------------------------
def add_embed(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "embed", cmd_embed, help="embed a folder of images with a trained backbone (.npy + .csv of file names)",
        description="Compute the backbone's features of every image of a folder (or another source), batched on "
        "the device; writes OUT (.npy, float32 N x D), OUT.csv (row, path, class) and OUT.json (provenance).",
    )
    p.add_argument("--checkpoint", required=True, help="a run directory, a checkpoint, or an exported .safetensors")
    p.add_argument("--data", required=True, help="a folder of images (or a packed .npz, cifar10, ...)")
    p.add_argument("--split", default="train", help="split of a built-in or packed source (default train)")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="embeddings.npy")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", help="which backbone of the method (default: what its probes use)")


def cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from .api import load_backbone
    from .data import load_dataset
    from .eval.embed import embed_dataset, write_embeddings

    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be > 0, got {args.batch_size}.")
    model = load_backbone(args.checkpoint, args.device, args.encoder)
    preprocess = model.preprocess
    dataset = load_dataset(args.data, args.split, data_dir=args.data_dir, image_size=preprocess.image_size)
    amp = torch.bfloat16 if preprocess.device.type == "cuda" else None
    features = embed_dataset(model, dataset, args.batch_size, progress=True, autocast_dtype=amp)
    info = {"checkpoint": str(Path(args.checkpoint).resolve()), "encoder": args.encoder,
            "data": str(Path(args.data).resolve()) if Path(args.data).exists() else args.data, "split": args.split,
            "image_size": preprocess.image_size}
    out = write_embeddings(args.out, features, dataset, info)
    print(f"wrote {out} ({features.shape[0]} x {features.shape[1]}) and {out.with_suffix('.csv').name}")
    return 0


def add_neighbors(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "neighbors", cmd_neighbors,
        help="nearest images to a query, or near-duplicate pairs, from `selfsup embed`'s output",
        description="Find the images most similar to a query image or row, or list near-duplicate pairs. Similarity "
        "is the cosine of the embeddings centred on the folder's mean (backbone features are all positive, so raw "
        "cosines crowd near 1); --no-center gives the raw cosine.",
    )
    p.add_argument("--embeddings", required=True, help="the .npy written by `selfsup embed`")
    p.add_argument("--query", help="an image file (embedded with the same checkpoint) or a row number")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--duplicates", action="store_true", help="list pairs with similarity >= --threshold")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--checkpoint", help="embed the query with this instead of the one recorded with the embeddings")
    p.add_argument("--no-center", action="store_true",
                   help="raw cosine similarity (default: cosine of embeddings centred on the folder's mean)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def query_vector(query: str, info: dict[str, Any], checkpoint: str | None, device: str, count: int) -> tuple[Any, int | None]:
    """(the query's embedding, its row when the query is a row number)."""
    path = Path(query)
    if not path.exists() and query.lstrip("-").isdigit():
        row = int(query)
        if not 0 <= row < count:
            raise ConfigError(f"row {row} is out of range: the embeddings have {count} rows.")
        return None, row
    if not path.is_file():
        raise ConfigError(f"--query '{query}' is neither an image file nor a row number.")
    source = checkpoint or info.get("checkpoint")
    if not source:
        raise ConfigError("the embeddings do not record their checkpoint; pass --checkpoint to embed the query.")
    import torch

    from .api import load_backbone

    model = load_backbone(source, device, info.get("encoder"))
    try:
        with torch.no_grad():
            vector = model(model.preprocess([path]))[0].float().cpu()
    except ValueError as exc:  # open_image's reason for an unreadable file
        raise ConfigError(f"cannot read query image '{path}': {exc}") from None
    return vector, None


def cmd_neighbors(args: argparse.Namespace) -> int:
    from .eval.embed import near_duplicates, nearest, read_embeddings

    features, names, info = read_embeddings(args.embeddings)
    if args.duplicates:
        pairs = near_duplicates(features, args.threshold, center=not args.no_center)
        if args.json:
            print(json.dumps([{"a": names[i], "b": names[j], "similarity": s} for i, j, s in pairs], indent=2))
            return 0
        for i, j, s in pairs:
            print(f"{s:.4f}\t{names[i]}\t{names[j]}")
        print(f"{len(pairs)} pair(s) with cosine similarity >= {args.threshold}", file=sys.stderr)
        return 0
    if not args.query:
        raise SelfsupError("give --query IMAGE_OR_ROW, or --duplicates.")
    if args.k <= 0:
        raise ConfigError(f"--k must be > 0, got {args.k}.")
    vector, row = query_vector(args.query, info, args.checkpoint, args.device, len(features))
    # a row query: its own row (the nearest) is left out of one more neighbour
    query, extra = (vector, 0) if row is None else (features[row], 1)
    found = [(i, s) for i, s in nearest(features, query, args.k + extra, not args.no_center) if i != row][: args.k]
    if args.json:
        print(json.dumps([{"row": i, "path": names[i], "similarity": s} for i, s in found], indent=2))
        return 0
    for rank, (i, s) in enumerate(found, 1):
        print(f"{rank}\t{s:.4f}\t{names[i]}")
    return 0

# The subcommands `selfsup --help` lists after train, eval, methods and data, in this order.
COMMANDS = (add_attention, add_compare, add_report, add_export, add_embed, add_neighbors)
