"""What a run learned, in pictures and tables: ``selfsup report`` and ``selfsup compare``.

A report is a folder ``RUN/report/`` holding ``index.html`` and PNG figures, with no external
resource, so it opens offline in any browser:

- training curves from ``metrics.jsonl``: loss, learning rate, kNN accuracy (with the random-init
  point), and any other scalar the method logs;
- a 2-D map of test embeddings coloured by class (UMAP when installed, else t-SNE for up to a few
  thousand points, else PCA);
- a retrieval grid: test queries and their nearest training images by cosine similarity, the
  wrong-class neighbours framed in red;
- the augmentation preview of the run's recipe;
- attention maps of the last block for ViT backbones (when ``selfsup.eval.attention`` provides them);
- the probe results (``summary.json`` and ``evals.jsonl``) and the resolved configuration.

This module only renders: the caller (``selfsup report``) rebuilds the method, its recipe and the
data through the engine and hands them over.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data import ImageSet
from ..runs import read_jsonl, read_metrics
from .knn import extract_features

# Columns of `selfsup compare`: (key, header); values that are fractions print as percentages.
COMPARE_COLUMNS = [
    ("run", "run"), ("method", "method"), ("backbone", "backbone"), ("data", "data"), ("epochs", "epochs"),
    ("batch_size", "batch"), ("knn_k", "kNN k"), ("knn_last", "kNN last"), ("knn_best", "kNN best"), ("knn_random", "kNN random-init"),
    ("linear", "linear"), ("linear_random", "linear random-init"), ("finetune", "fine-tune"),
    ("wall_time_s", "time (s)"),
]
_PERCENT = {"knn_last", "knn_best", "knn_random", "linear", "linear_random", "finetune"}
# Logged keys that are bookkeeping rather than curves worth drawing.
_NOT_CURVES = {"time", "step", "epoch", "images_per_s", "random_init", "knn_top1", "knn_top5", "loss", "lr"}


# -- reading a run ------------------------------------------------------------------------------
def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The files of a run: resolved config, summary, metrics and recorded probe results."""
    import yaml

    from ..errors import DataError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"'{run_dir}' is not a run directory (no config.yaml); give the folder `selfsup train` wrote.")
    summary_path = run_dir / "summary.json"
    return {
        "dir": run_dir,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()) or {},
        "summary": json.loads(summary_path.read_text()) if summary_path.is_file() else {},
        "metrics": read_metrics(run_dir),
        "evals": read_jsonl(run_dir / "evals.jsonl"),
    }


def _full_label_probe(evals: list[dict[str, Any]], probe: str) -> dict[str, Any] | None:
    """The newest recorded ``probe`` result trained with all labels."""
    low_label = ("labels_per_class", "label_fraction")
    full = [r for r in evals if r.get("probe") == probe and not any(r.get("settings", {}).get(s) for s in low_label)]
    return full[-1] if full else None


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One row of `selfsup compare`: what the run's files say about it."""
    config, summary, metrics = run["config"], run["summary"], run["metrics"]
    knn = [r for r in metrics if "knn_top1" in r and not r.get("random_init")]
    random = [r for r in metrics if "knn_top1" in r and r.get("random_init")]
    linear, tuned = (_full_label_probe(run["evals"], probe) for probe in ("linear", "finetune"))
    return {
        "run": Path(run["dir"]).name,
        **{key: summary.get(key, config.get(key)) for key in ("method", "backbone", "data", "epochs", "batch_size")},
        "knn_last": summary.get("knn_top1", knn[-1]["knn_top1"] if knn else None),
        "knn_best": summary.get("best_knn_top1", max((r["knn_top1"] for r in knn), default=None)),
        "knn_random": summary.get("knn_random_top1", random[0]["knn_top1"] if random else None),
        "knn_k": summary.get("knn_k", config.get("knn_k")),
        # None where the run has no full-label result of that probe
        "linear": linear and linear["learned"]["top1"],
        "linear_random": linear and (linear.get("random") or {}).get("top1"),
        "finetune": tuned and tuned["learned"]["top1"],
        "wall_time_s": summary.get("wall_time_s"),
    }


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _cell(key: str, value: Any) -> str:
    if value is None or key in _PERCENT:
        return _pct(value)
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COMPARE_COLUMNS) -> str:
    """Rows as a Markdown table (percentages for accuracies, '-' where unknown)."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, row.get(k)).replace("|", "\\|") for k, _ in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str | Path, columns: list[tuple[str, str]] = COMPARE_COLUMNS) -> Path:
    """Rows as CSV with raw values (accuracies as fractions), one header line of keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([k for k, _ in columns])
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k, _ in columns])
    return path


# -- figures ------------------------------------------------------------------------------------
def _figure(width: float = 5.0, height: float = 3.2):  # noqa: ANN202
    # A bare Figure renders with Agg and touches no global pyplot state or display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _axes(fig: Any, *position: int, **labels: Any) -> Any:
    """A subplot of ``fig`` with ``labels`` (title, xlabel...) and a light grid."""
    ax = fig.add_subplot(*position)
    ax.set(**labels)
    ax.grid(alpha=0.3)
    return ax


def plot_curves(metrics: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, str]]:
    """Loss, learning rate, kNN accuracy and other logged scalars; [(file name, caption)]."""
    steps = [r for r in metrics if "loss" in r]
    figures = []
    for key, title in (("loss", "training loss"), ("lr", "learning rate")):
        points = [(r["step"], r[key]) for r in steps if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            fig = _figure()
            ax = _axes(fig, xlabel="step", ylabel=key, title=title)
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
            fig.savefig(out_dir / f"{key}.png")
            figures.append((f"{key}.png", f"{title} per logged step ({len(points)} points)"))
    knn = [r for r in metrics if "knn_top1" in r]
    if knn:
        fig = _figure()
        ax = _axes(fig, xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN accuracy on the test split")
        learned = [(r["epoch"], 100 * r["knn_top1"]) for r in knn if not r.get("random_init")]
        random = [(r["epoch"], 100 * r["knn_top1"]) for r in knn if r.get("random_init")]
        if learned:
            ax.plot(*zip(*learned), marker="o", label="learned")
        if random:
            ax.axhline(random[0][1], color="gray", linestyle="--", label="random-init backbone")
            ax.plot(*random[0], marker="o", color="gray")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        fig.savefig(out_dir / "knn.png")
        figures.append(("knn.png", "weighted kNN top-1 during training (dashed: the random-init backbone)"))
    others = sorted({k for r in steps for k, v in r.items() if k not in _NOT_CURVES and isinstance(v, (int, float))
                     and not isinstance(v, bool)})
    if others:
        cols = min(3, len(others))
        rows = -(-len(others) // cols)
        fig = _figure(4.0 * cols, 2.8 * rows)
        for i, key in enumerate(others):
            points = [(r["step"], r[key]) for r in steps if isinstance(r.get(key), (int, float))]
            _axes(fig, rows, cols, i + 1, xlabel="step", title=key).plot(*zip(*points))
        fig.savefig(out_dir / "logged.png")
        figures.append(("logged.png", "other scalars the method logs: " + ", ".join(others)))
    return figures


def project_2d(features: np.ndarray, algorithm: str = "auto", seed: int = 0, tsne_limit: int = 5000) -> tuple[np.ndarray, str]:
    """2-D coordinates of L2-normalized features and the algorithm used.

    ``auto``: UMAP if the ``umap`` package is importable, else t-SNE (scikit-learn) for at most
    ``tsne_limit`` points (it is quadratic-ish and slow beyond), else PCA."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if algorithm == "auto":
        try:
            import umap  # noqa: F401

            algorithm = "umap"
        except ImportError:
            algorithm = "tsne" if len(x) <= tsne_limit else "pca"
    if algorithm == "umap":
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x), "UMAP"
    if algorithm == "tsne" and len(x) > 4:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(x) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(x), "PCA"


def embedding_map(features: np.ndarray, labels: np.ndarray, classes: list[str], out: Path, algorithm: str = "auto") -> str:
    """Scatter of the 2-D projection coloured by class; returns the algorithm's name."""
    coords, used = project_2d(features, algorithm)
    from matplotlib import colormaps

    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    colors = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for c in np.unique(labels):
        members = labels == c
        name = classes[c] if 0 <= c < len(classes) else "unlabelled"
        ax.scatter(coords[members, 0], coords[members, 1], s=6, color=colors(int(c) % colors.N), label=name)
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True)
    ax.set(title=f"{used} of {len(features)} test embeddings", xticks=[], yticks=[])
    fig.savefig(out)
    return used


def _tile(image: np.ndarray, side: int, frame: tuple[int, int, int] | None, width: int = 3) -> np.ndarray:
    factor = max(1, side // max(image.shape[:2]))
    big = image.repeat(factor, 0).repeat(factor, 1)
    canvas = np.full((side + 2 * width, side + 2 * width, 3), 255, dtype=np.uint8)
    if frame is not None:
        canvas[:] = frame
    h, w = big.shape[:2]
    top, left = width + (side - h) // 2, width + (side - w) // 2
    canvas[top : top + h, left : left + w] = big[:side, :side]
    return canvas


def _join(parts: list[np.ndarray], gap: int, axis: int) -> np.ndarray:
    """``parts`` stacked along ``axis`` (0: one above the other, 1: side by side), ``gap`` white pixels apart."""
    shape = list(parts[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, dtype=np.uint8)
    return np.concatenate([x for part in parts for x in (part, spacer)][:-1], axis=axis)


RED, GREEN, BLUE = (214, 39, 40), (44, 160, 44), (40, 90, 200)


def pick_queries(labels: torch.Tensor, count: int) -> list[int]:
    """Up to ``count`` test indices, one per class in turn (the first image of each class)."""
    # unique() sorts the classes; zip_longest takes the next image of every class in turn
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in labels[labels >= 0].unique()]
    return [index for turn in itertools.zip_longest(*by_class) for index in turn if index is not None][:count]


def retrieval_grid(
    train: ImageSet, train_features: torch.Tensor, test: ImageSet, test_features: torch.Tensor, out: Path,
    queries: int = 8, k: int = 8,
) -> dict[str, Any]:
    """Each row: a test query (blue frame) and its ``k`` nearest training images by cosine
    similarity, framed green when of the query's class and red when not."""
    import torch.nn.functional as F
    from PIL import Image

    chosen = pick_queries(test.labels, queries)
    bank = F.normalize(train_features.float().cpu(), dim=1)
    q = F.normalize(test_features[chosen].float().cpu(), dim=1)
    top = (q @ bank.T).topk(min(k, len(bank)), dim=1).indices
    same = train.labels[top] == test.labels[chosen][:, None]  # (queries, k)
    side = max(64, int(train.images.shape[1]))
    rows = []
    for qi, neighbours, hits in zip(chosen, top.tolist(), same.tolist()):
        tiles = [_tile(train.images[n].numpy(), side, GREEN if hit else RED) for n, hit in zip(neighbours, hits)]
        rows.append(_join([_tile(test.images[qi].numpy(), side, BLUE), np.concatenate(tiles, axis=1)], side // 4, 1))
    Image.fromarray(_join(rows, 4, 0)).save(out)
    return {"queries": len(chosen), "k": int(top.shape[1]), "same_class": int(same.sum()) / max(1, same.numel())}


def image_columns(columns: dict[str, torch.Tensor], out: Path) -> int:
    """A grid of uint8 image batches ``(B, h, w, 3)`` side by side: row i holds image i of every
    batch, in the order of ``columns`` (e.g. masked input, reconstruction, original). Returns the
    number of rows."""
    from PIL import Image

    batches = [batch.cpu().numpy() for batch in columns.values()]
    count = min(len(b) for b in batches)
    side = max(64, max(int(b.shape[1]) for b in batches))
    rows = [_join([_tile(b[i], side, None) for b in batches], 4, 1) for i in range(count)]
    Image.fromarray(_join(rows, 4, 0)).save(out)
    return count


# -- the page -----------------------------------------------------------------------------------
def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, value)]


def _table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    esc = lambda v: html.escape("-" if v is None else str(v))  # noqa: E731
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _probe_rows(run: dict[str, Any]) -> list[list[Any]]:
    summary = run["summary"]
    rows = []
    if summary.get("knn_top1") is not None:
        k = summary.get("knn_k", 200)  # runs from before the k rule used 200
        rows.append(["kNN during training", summary.get("knn_queries") or summary.get("data"),
                     summary.get("knn_bank") or "all", _pct(summary.get("knn_top1")),
                     _pct(summary.get("knn_top5")), _pct(summary.get("knn_random_top1")),
                     f"k={k}, best during training {_pct(summary.get('best_knn_top1'))}"])
    for record in run["evals"]:
        learned, random = record.get("learned") or {}, record.get("random") or {}
        settings = ", ".join(f"{k}={v}" for k, v in record.get("settings", {}).items())
        rows.append([record.get("probe"), record.get("queries") or record.get("data"),
                     record.get("bank") or record.get("train_images", "-"), _pct(learned.get("top1")),
                     _pct(learned.get("top5")), _pct(random.get("top1")), settings])
    return rows


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555;max-width:640px}
.note{color:#555;font-size:.9em}
"""


def write_report(
    run_dir: str | Path,
    method: torch.nn.Module | None = None,
    recipe: Callable[..., Any] | None = None,
    train: ImageSet | None = None,
    test: ImageSet | None = None,
    device: torch.device | str = "cpu",
    crop_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    map_algorithm: str = "auto",
    map_points: int = 2000,
    queries: int = 8,
    k: int = 8,
    attention: Callable[[Path], list[tuple[str, str]]] | None = None,
    method_images: tuple[str, dict[str, torch.Tensor]] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``RUN/report/index.html`` and its figures; returns the page's path.

    Without ``method`` (or without labelled ``train``/``test``) the pictures that need features are
    left out and the page says why (``notes``). ``attention`` draws attention maps into the report
    folder and returns [(file, caption)] (ViT backbones). ``method_images`` is what the method's
    ``report_images`` returned: a section title and named uint8 batches, drawn as columns.
    """
    run = read_run(run_dir)
    out_dir = Path(run_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = list(notes or [])
    # (title, figures); only the training curves can come out empty
    sections: list[tuple[str, list[tuple[str, str]]]] = [("Training curves", plot_curves(run["metrics"], out_dir))]

    if method is not None and train is not None and test is not None and train.labelled and test.labelled:
        was_training = method.training
        method.eval()
        extract = partial(extract_features, method.representation, method.eval_transform, device=device,
                          crop_size=crop_size, autocast_dtype=autocast_dtype)
        shown = test if len(test) <= map_points else test.subset(np.arange(map_points))
        train_features, test_features = extract(train), extract(shown)
        method.train(was_training)
        used = embedding_map(test_features.cpu().numpy(), shown.labels.numpy(), test.classes, out_dir / "embedding_map.png",
                             map_algorithm)
        stats = retrieval_grid(train, train_features, shown, test_features, out_dir / "retrieval.png", queries, k)
        sections.append(("Embeddings", [
            ("embedding_map.png", f"{used} of the backbone's features of {len(shown)} test images ({shown.name}), "
             "coloured by class; labels are used only for colour"),
        ]))
        sections.append(("Nearest neighbours", [
            ("retrieval.png", f"each row: a test image (blue) and its {stats['k']} nearest of {len(train)} training images "
             f"by cosine similarity; green: same class, red: another class. {100 * stats['same_class']:.1f}% of the "
             "neighbours shown share the query's class"),
        ]))
    elif method is not None:
        notes.append("No labelled train/test split to draw the embedding map and the retrieval grid with "
                     "(give a labelled source with --data).")

    if recipe is not None and train is not None and not train.streamed:
        from ..augment.preview import preview_grid

        scale = max(1, 96 // int(train.images.shape[1]))
        preview_grid(train.images[:6], recipe, seed=0, scale=scale).save(out_dir / "augmentations.png")
        name = getattr(recipe, "name", "the run's recipe")
        caption = f"the run's recipe ({name}): each row an original training image, then its views"
        sections.append(("Augmentations", [("augmentations.png", caption)]))

    if method_images is not None:
        title, columns = method_images
        rows = image_columns(columns, out_dir / "method_images.png")
        caption = f"{rows} test images, one per row; columns: {', '.join(columns)}"
        sections.append((title, [("method_images.png", caption)]))

    figures = attention(out_dir) if attention is not None else None
    if figures:
        sections.append(("Attention", figures))

    summary, config, row = run["summary"], run["config"], run_row(run)
    title = f"{row['method']} / {row['backbone']} on {row['data']}"
    facts = [["run", Path(run_dir).resolve().name]]
    facts += [[key, summary[key]] for key in ("epochs", "steps", "batch_size", "wall_time_s", "images_per_s", "device",
                                               "checkpoint") if key in summary]
    probes = _probe_rows(run)
    baseline = "initial backbone" if config.get("init") else "random-init"
    header = ["probe", "scored on", "bank / trained on", "top-1", "top-5", f"{baseline} top-1", "settings"]
    probe_html = _table(probes, header) if probes else \
        "<p class=note>No probe results yet: run <code>selfsup eval knn|linear|finetune RUN</code>.</p>"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>selfsup report: {html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", _table(facts),
    ]
    parts += [f"<p class=note>{html.escape(n)}</p>" for n in notes]
    parts += ["<h2>Probes</h2>", probe_html]
    for section, figures in sections:
        extra = "" if figures else "<p class=note>metrics.jsonl has no records yet.</p>"
        parts.append(f"<h2>{html.escape(section)}</h2>{extra}")
        parts += [f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
                  f"<figcaption>{html.escape(caption)}</figcaption></figure>" for file, caption in figures]
    parts += ["<h2>Configuration</h2>", _table([[k, json.dumps(v) if not isinstance(v, str) else v]
                                               for k, v in _flatten("", config)], ["field", "value"])]
    parts.append("</body></html>")
    page = out_dir / "index.html"
    page.write_text("\n".join(parts))
    return page


__all__ = [
    "COMPARE_COLUMNS", "embedding_map", "image_columns", "markdown_table", "plot_curves", "project_2d", "read_run",
    "retrieval_grid", "run_row", "write_csv", "write_report",
]
