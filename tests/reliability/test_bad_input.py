"""Bad input is refused before training with one clear line and exit status 2 (never a traceback),
or, for damaged files among good ones, skipped, counted and reported. Every case runs through the
real ``selfsup`` command line (all in one process, see cli_batch.py); image modes are decoded from
real files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from selfsup.data import decode_to_array, load_dataset
from selfsup.errors import DataError

from .helpers import run_batch


def _random_images(folder: Path, count: int, size: int = 20, seed: int = 0, fmt: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.{'jpg' if fmt == 'jpeg' else fmt}"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format=fmt.upper())
        paths.append(path)
    return paths


def _png_bomb(path: Path, side: int = 10_000) -> None:
    """A valid 1-bit PNG of side x side pixels, all black: 100 M pixels in about 12 kB, written
    row by row so the test never holds it in memory."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _packed(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty").mkdir()
    (root / "nonimages").mkdir()
    (root / "nonimages" / "notes.txt").write_text("hello")
    (root / "nonimages" / "table.csv").write_text("a,b\n1,2\n")
    (root / "allbad").mkdir()
    (root / "allbad" / "x.jpg").write_bytes(b"this is not a jpeg")
    (root / "allbad" / "y.png").write_bytes(b"")

    mixed = root / "mixed"
    jpgs = _random_images(mixed, 10, fmt="jpeg")
    pngs = _random_images(mixed, 10, seed=1)
    pngs = [p.rename(p.with_name("p" + p.name)) for p in pngs]
    (mixed / "zero.jpg").write_bytes(b"")
    (mixed / "truncated.jpg").write_bytes(jpgs[0].read_bytes()[: jpgs[0].stat().st_size // 2])
    (mixed / "truncated.png").write_bytes(pngs[0].read_bytes()[: pngs[0].stat().st_size // 2])
    (mixed / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    _png_bomb(mixed / "bomb.png")
    (mixed / "readme.txt").write_text("not an image, not counted")

    _random_images(root / "labelled_empty" / "cat", 3)
    _random_images(root / "labelled_empty" / "dog", 3)
    (root / "labelled_empty" / "bird").mkdir()
    _random_images(root / "labelled_unreadable" / "cat", 3)
    (root / "labelled_unreadable" / "dog").mkdir()
    (root / "labelled_unreadable" / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 not really")

    sizes = root / "sizes"
    _random_images(sizes, 10)
    Image.new("RGB", (1, 1), (200, 10, 30)).save(sizes / "one.png")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(sizes / "eight.png")

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    blob = np.frombuffer(buffer.getvalue() * 3, dtype=np.uint8)
    size = len(buffer.getvalue())
    good = dict(classes=np.array(["a"]), train_jpeg=blob, train_labels=np.zeros(3, dtype=np.int64))
    _packed(root / "missing_keys.npz", train_jpeg=blob)
    _packed(root / "bad_offsets.npz", **good, train_offsets=np.array([0, size, size // 2, 3 * size]))
    _packed(root / "bad_labels.npz", classes=np.array(["a"]), train_jpeg=blob,
            train_offsets=np.arange(4) * size, train_labels=np.array([0, 5, 0]))
    (root / "not_a_zip.npz").write_bytes(b"PK but not really a zip file")
    (root / "bad.yaml").write_text("lr: [unclosed\n")
    return root


def _train(runs: Path, name: str, *extra: str, data: str = "digits", method: tuple[str, ...] = ()) -> list[str]:
    return [
        "train", "--data", str(data), *method, "--backbone", "tiny", "--image-size", "16", "--batch-size", "16",
        "--epochs", "1", "--device", "cpu", "--run-dir", str(runs), "--name", name, "train_subset=256",
        "progress=false", "backbone.width=8", *extra,
    ]


# name -> (arguments builder, expected status, expected text, refused before the run directory exists)
def _cases(root: Path, runs: Path) -> dict[str, tuple[list[str], int, list[str], bool]]:
    def train(name: str, *extra: str, data: str = "digits", **kw: Any) -> list[str]:
        return _train(runs, name, *extra, data=data, **kw)

    refused = lambda *texts: (2, list(texts), True)  # noqa: E731
    cases = {
        # data sources
        "nonexistent path": (train("c01", data="/nonexistent/photos"), *refused("data path '/nonexistent/photos' does not exist")),
        "unknown source name": (train("c02", data="cifar1"), *refused("unknown data source 'cifar1'. Did you mean 'cifar10'?")),
        "empty folder": (train("c03", data=root / "empty"), *refused(f"data folder '{root / 'empty'}' holds no files")),
        "only non-images": (train("c04", data=root / "nonimages"),
                            *refused("holds 2 file(s), none with an image extension", "Expected images (bmp, gif, jpeg, jpg")),
        "only unreadable images": (train("c05", data=root / "allbad"),
                                   *refused("holds 2 image file(s) but none could be read", "x.jpg")),
        "labelled folder with an empty class": (train("c06", data=root / "labelled_empty"),
                                                *refused("class folder(s) 'bird'", "hold no image")),
        "class whose files are all unreadable": (train("c07", data=root / "labelled_unreadable"),
                                                 *refused("class folder(s) 'dog'", "hold no readable image")),
        "packed: missing keys": (train("c08", data=root / "missing_keys.npz"),
                                 *refused("has no split 'train' (missing keys: train_offsets, train_labels)")),
        "packed: inconsistent offsets": (train("c09", data=root / "bad_offsets.npz"),
                                         *refused("train_offsets is inconsistent (expected 4 increasing offsets")),
        "packed: labels out of range": (train("c10", data=root / "bad_labels.npz"), *refused("train_labels has values outside -1..0")),
        "packed: not an npz": (train("c11", data=root / "not_a_zip.npz"), *refused("is not a readable .npz file")),
        "packed: nonexistent": (train("c12", data=root / "nope.npz"), *refused(f"packed file '{root / 'nope.npz'}' does not exist")),
        # names and keys
        "unknown method": (train("c20", method=("--method", "simclrr")), *refused("unknown method 'simclrr'. Did you mean 'simclr'?")),
        "unknown backbone": (train("c21") + ["--backbone", "resnet19"], *refused("unknown backbone 'resnet19'. Did you mean 'resnet18'?")),
        "unknown config key": (train("c22", "batchsize=3"),
                               *refused("unknown key 'batchsize' in config. Did you mean 'batch_size'? Valid keys: method, method_args")),
        "unknown method key": (train("c23", "method.temprature=0.1"),
                               *refused("unknown key 'temprature' in method 'simclr'. Did you mean 'temperature'?")),
        "unknown augmentation key": (train("c24", "augment.crop_sclae=[0.2,1]"),
                                     *refused("unknown augmentation key 'crop_sclae'", "Did you mean 'crop_scale'?")),
        "unknown recipe": (train("c25", "recipe=simclrr"), *refused("unknown augmentation recipe 'simclrr'. Did you mean 'simclr'?")),
        "unknown device": (train("c26") + ["--device", "gpu"], *refused("unknown device 'gpu'; use auto, cpu, cuda or cuda:N")),
        "missing config file": (["train", "--config", "nosuch.yaml"], *refused("config 'nosuch.yaml' is neither a file nor a bundled config")),
        "config file not YAML": (["train", "--config", str(root / "bad.yaml")], *refused("is not valid YAML (line 2, column 1: expected ',' or ']'")),
        "--resume without --name": (["train", "--resume"], *refused("--resume needs --name")),
        # types
        "epochs not an integer": (train("c30", "epochs=two"), *refused("config.epochs: expected an integer, got 'two'")),
        "lr not a number": (train("c31", "lr=fast"), *refused("config.lr: expected a number, got 'fast'")),
        "lr not finite": (train("c32", "lr=.nan"), *refused("config.lr: expected a finite number, got nan")),
        "bool not a bool": (train("c33", "skip_nonfinite=maybe"), *refused("config.skip_nonfinite: expected true or false, got 'maybe'")),
        "mapping not a mapping": (train("c34", "augment=[1,2]"), *refused("config.augment: expected a mapping, got [1, 2]")),
        # impossible values
        "negative learning rate": (train("c40") + ["--lr", "-0.1"], *refused("lr must be > 0, got -0.1")),
        "batch size 0": (train("c41") + ["--batch-size", "0"], *refused("batch_size must be > 0, got 0")),
        "batch larger than the dataset": (train("c42") + ["--batch-size", "512"],
                                          *refused("batch_size 512 is larger than the training set (256 images)")),
        "temperature 0": (train("c43", "method.temperature=0"), *refused("temperature must be > 0, got 0.0")),
        "temperature negative": (train("c44", "method.temperature=-0.5"), *refused("temperature must be > 0, got -0.5")),
        "epochs 0": (train("c45") + ["--epochs", "0"], *refused("epochs must be > 0, got 0")),
        "image size 0": (train("c46") + ["--image-size", "0"], *refused("image_size must be > 0, got 0")),
        "keep no checkpoint": (train("c47", "keep_checkpoints=0"), *refused("keep_checkpoints >= 1")),
        "far more local crops than any paper": (train("c48", "recipe=multicrop", "augment.num_local=1000000"),
                                                *refused("the recipe asks for 1000002 views per image (2 of 16 px + 1000000 of 8 px)",
                                                         "at most 64")),
        "more crop pixels than memory allows": (train("c50", "recipe=multicrop", "augment.num_local=60", "augment.local_size=8192"),
                                                *refused("the augmented views alone would need 720.0 GiB per step",
                                                         "augment.num_local")),
        "queue smaller than the batch": (train("c49", "method.queue_size=8", method=("--method", "moco_v2")),
                                         2, ["the queue holds 8 keys but a step enqueues 16", "queue_size >= batch_size"], False),
        # accepted, with the damaged files skipped, counted and reported
        "good images among damaged ones": (["data", "info", str(root / "mixed")], 0, [
            "mixed: 20 training images", "skipped 5 unreadable file(s)", "zero.jpg", "truncated.jpg", "truncated.png",
            "corrupt.png", "bomb.png: 10000x10000 px exceeds the limit of 64,000,000 pixels (a decompression-bomb guard",
        ], False),
        "1x1 and 8x8 images": (["data", "info", str(root / "sizes")], 0, ["sizes: 12 training images"], False),
    }
    return cases


def test_every_bad_input_is_refused_clearly_before_training(inputs: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cases = _cases(inputs, runs)
    results = run_batch({name: args for name, (args, *_rest) in cases.items()}, cwd=tmp_path)
    failures = []
    for name, (args, status, texts, before_run_dir) in cases.items():
        result = results[name]
        output = result["stdout"] + result["stderr"]
        problems = []
        if result["escaped"]:
            problems.append(f"an exception escaped:\n{result['escaped']}")
        if result["status"] != status:
            problems.append(f"status {result['status']} instead of {status}")
        problems += [f"missing {text!r}" for text in texts if text not in output]
        if status == 2:
            last = result["stderr"].strip().splitlines()[-1] if result["stderr"].strip() else ""
            if not last.startswith("selfsup: error: "):
                problems.append("the error is not one 'selfsup: error: ...' line")
        if "Traceback" in output:
            problems.append("a traceback was printed")
        run_dir = runs / args[args.index("--name") + 1] if "--name" in args else None
        if before_run_dir and run_dir is not None and run_dir.exists():
            problems.append(f"the run directory {run_dir} was created: the refusal came too late")
        if run_dir is not None and (run_dir / "checkpoints").exists():
            problems.append("a checkpoint was written")
        if problems:
            failures.append(f"{name}: " + "; ".join(problems) + f"\n    stderr: {result['stderr'][-600:]!r}")
    assert not failures, "\n".join(failures)


# -- decoding every kind of image file -------------------------------------------------------


def _save(image: Image.Image, path: Path, **kwargs: Any) -> Path:
    image.save(path, **kwargs)
    return path


def test_grayscale_and_palette_images_become_rgb(tmp_path: Path) -> None:
    gray = _save(Image.new("L", (6, 4), 77), tmp_path / "gray.png")
    assert (decode_to_array(gray, None) == 77).all()
    palette = Image.new("P", (6, 4))
    palette.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    palette.paste(1, (3, 0, 6, 4))
    array = decode_to_array(_save(palette, tmp_path / "palette.png"), None)
    assert array.shape == (4, 6, 3)
    assert (array[:, :3] == (10, 20, 30)).all() and (array[:, 3:] == (200, 150, 100)).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, 2:, 3] = 255  # right half opaque, left half fully transparent
    array = decode_to_array(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"), None)
    assert (array[:, :2] == 255).all() and (array[:, 2:] == (255, 0, 0)).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    array = decode_to_array(_save(cmyk, tmp_path / "cmyk.jpg", quality=100), None)
    assert array.shape == (16, 16, 3)
    assert np.abs(array.astype(int) - (255, 0, 0)).max() <= 8


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(2, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    array = decode_to_array(path, None)
    assert array[0, :, 0].tolist() == [0, 64, 128, 255] and (array[..., 0] == array[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Stored landscape, left half red and right half blue, with EXIF orientation 6 ("rotate 90°
    clockwise to display"): shown as a portrait with red on top."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = decode_to_array(path, None)
    assert shown.shape == (40, 20, 3)
    assert shown[:15, :, 0].min() > 200 and shown[:15, :, 2].max() < 60  # top: red
    assert shown[25:, :, 2].min() > 200 and shown[25:, :, 0].max() < 60  # bottom: blue
    resized = decode_to_array(path, 16)  # the fast JPEG draft path too
    assert resized[:4, :, 0].min() > 200 and resized[-4:, :, 2].min() > 200


def test_tiny_images_are_upscaled_and_huge_ones_refused_before_decoding(tmp_path: Path) -> None:
    one = _save(Image.new("RGB", (1, 1), (200, 10, 30)), tmp_path / "one.png")
    assert (decode_to_array(one, 16) == (200, 10, 30)).all()
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"10000x10000 px exceeds the limit of 64,000,000 pixels"):
        decode_to_array(bomb, 16)
    # Raised limit: the guard follows max_image_pixels (the config field of the same name).
    with pytest.raises(ValueError, match=r"exceeds the limit of 1,000 pixels"):
        decode_to_array(_save(Image.new("RGB", (40, 40)), tmp_path / "forty.png"), 16, max_pixels=1000)
    folder = tmp_path / "folder"
    _random_images(folder, 3)
    (folder / "bomb.png").write_bytes(bomb.read_bytes())
    dataset = load_dataset(str(folder), image_size=16)
    assert len(dataset) == 3 and [Path(p).name for p in dataset.skipped] == ["bomb.png"]
    with pytest.raises(DataError, match="none could be read"):
        load_dataset(str(folder), image_size=16, max_image_pixels=10)
