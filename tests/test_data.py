"""Data sources on real data (CIFAR-10 from ../shared/data, in both official layouts; folders of
real JPEGs and PNGs written from it; scikit-learn's digits), the search order of data folders, the
packed round trip through `selfsup data pack`, and the batch loader's semantics.

(The matrix of messy image files lives in tests/reliability/.)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main as cli
from selfsup.data import BatchLoader, ImageSet, epoch_permutation, load_dataset, load_folder, search_dirs, write_packed
from selfsup.errors import DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_npz(path: Path, split: str, count: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The first ``count`` images of a split straight from the file: JPEG bytes, Pillow's decoding
    (independent of selfsup's decoders) and labels."""
    with np.load(path) as archive:
        blob, offsets, labels = archive[f"{split}_jpeg"], archive[f"{split}_offsets"], archive[f"{split}_labels"]
    raw = [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(count)]
    arrays = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in raw])
    return raw, arrays, labels[:count].copy()


@pytest.fixture(scope="module")
def cifar_head(cifar_npz) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The first 120 CIFAR-10 training images (JPEG bytes, decoded uint8 (120, 32, 32, 3), labels)."""
    return read_npz(cifar_npz, "train", 120)


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No $SELFSUP_DATA, an empty cache and HOME: only what a test puts there is found."""
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    monkeypatch.delenv("SELFSUP_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# -- CIFAR: the packed .npz --------------------------------------------------------------------


def test_cifar10_packed_test_split_is_complete_and_decodes_like_pillow(data_dir, cifar_npz) -> None:
    test = load_dataset("cifar10", "test", data_dir=data_dir)
    assert test.images.shape == (10_000, 32, 32, 3) and test.images.dtype == torch.uint8
    assert test.classes == CIFAR10_CLASSES
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    _, arrays, labels = read_npz(cifar_npz, "test", 300)
    assert np.abs(test.images[:300].numpy().astype(int) - arrays).max() <= 1  # libjpeg-turbo vs Pillow
    assert torch.equal(test.labels[:300], torch.from_numpy(labels))


def test_cifar10_subset_is_a_fixed_seeded_sample_of_the_training_split(data_dir, cifar_npz) -> None:
    a = load_dataset("cifar10", "train", data_dir=data_dir, limit=200, seed=3)
    b = load_dataset("cifar10", "train", data_dir=data_dir, limit=200, seed=3)
    c = load_dataset("cifar10", "train", data_dir=data_dir, limit=200, seed=4)
    assert len(a) == 200 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    # The subset is the training images at sorted(randperm(50,000, seed)[:limit]), with their labels.
    chosen = torch.randperm(50_000, generator=torch.Generator().manual_seed(3))[:200].sort().values.numpy()
    with np.load(cifar_npz) as archive:
        blob, offsets, labels = archive["train_jpeg"], archive["train_offsets"], archive["train_labels"]
    want = np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in chosen])
    assert np.abs(a.images.numpy().astype(int) - want).max() <= 1
    assert np.array_equal(a.labels.numpy(), labels[chosen])
    assert np.bincount(labels).tolist() == [5000] * 10 and len(offsets) == 50_001


# -- CIFAR: the official python-pickle folders -------------------------------------------------


def write_cifar10_folder(root: Path, arrays: np.ndarray, labels: np.ndarray, protocol: int) -> Path:
    """``cifar-10-batches-py`` as distributed: five training batches, a test batch and
    ``batches.meta``; each batch a pickled dict whose ``data`` is uint8 (N, 3072), rows of the red,
    green then blue 32 x 32 planes, and ``labels`` a list of ints."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = arrays.transpose(0, 3, 1, 2).reshape(len(arrays), 3072)
    chunks = np.array_split(np.arange(100), 5)
    for i, idx in enumerate(chunks, start=1):
        entry = {"batch_label": f"training batch {i} of 5", "labels": labels[idx].tolist(), "data": flat[idx],
                 "filenames": [f"img_{j}.png" for j in idx]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry, protocol=protocol))
    test = {"batch_label": "testing batch 1 of 1", "labels": labels[100:].tolist(), "data": flat[100:],
            "filenames": [f"img_{j}.png" for j in range(100, len(arrays))]}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=protocol))
    meta = {"num_cases_per_batch": 20, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar10_official_pickle_folder(isolated, cifar_head, protocol: int) -> None:
    _, arrays, labels = cifar_head
    write_cifar10_folder(isolated / "data", arrays, labels, protocol)
    train = load_dataset("cifar10", "train", data_dir=isolated / "data")
    test = load_dataset("cifar10", "test", data_dir=isolated / "data")
    assert train.classes == CIFAR10_CLASSES and len(train) == 100 and len(test) == 20
    assert torch.equal(train.images, torch.from_numpy(arrays[:100]))  # exact: raw pixels
    assert torch.equal(test.images, torch.from_numpy(arrays[100:]))
    assert torch.equal(train.labels, torch.from_numpy(labels[:100])) and torch.equal(test.labels, torch.from_numpy(labels[100:]))
    assert torch.equal(load_dataset("cifar10", "val", data_dir=isolated / "data").images, test.images)
    assert len(load_dataset("cifar10", "train", data_dir=isolated / "data", limit=30)) == 30


def test_cifar100_official_pickle_folder(isolated, cifar_head) -> None:
    _, arrays, labels = cifar_head
    folder = isolated / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = (labels * 10 + np.arange(len(labels)) % 10).astype(int)  # 100 classes (format test)
    flat = arrays.transpose(0, 3, 1, 2).reshape(len(arrays), 3072)
    for name, idx in (("train", slice(0, 100)), ("test", slice(100, None))):
        entry = {"batch_label": name, "fine_labels": fine[idx].tolist(), "coarse_labels": (fine[idx] // 5).tolist(),
                 "data": flat[idx], "filenames": ["x.png"] * len(flat[idx])}
        (folder / name).write_bytes(pickle.dumps(entry))
    fine_names = [f"class_{i:02d}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": fine_names, "coarse_label_names": [f"c{i}" for i in range(20)]}))
    train = load_dataset("cifar100", "train", data_dir=isolated / "data")
    test = load_dataset("cifar100", "test", data_dir=isolated / "data")
    assert train.classes == fine_names and train.num_classes == 100
    assert torch.equal(train.images, torch.from_numpy(arrays[:100])) and torch.equal(test.images, torch.from_numpy(arrays[100:]))
    assert torch.equal(train.labels, torch.from_numpy(fine[:100])) and torch.equal(test.labels, torch.from_numpy(fine[100:]))


def test_a_pickle_that_would_run_code_is_refused(isolated, cifar_head) -> None:
    _, arrays, labels = cifar_head
    folder = write_cifar10_folder(isolated / "data", arrays, labels, 4)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "train", data_dir=isolated / "data")


# -- where built-in data is looked for ----------------------------------------------------------


def packed_of(n: int, directory: Path, arrays: np.ndarray, name: str = "cifar10.npz") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_packed(directory / name, {"train": (arrays[:n], np.arange(n) % 10)}, CIFAR10_CLASSES, fmt="png")


def test_search_order_data_dir_then_env_then_cache(isolated, cifar_head, monkeypatch) -> None:
    _, arrays, _ = cifar_head
    packed_of(10, isolated / "arg", arrays)
    packed_of(20, isolated / "env", arrays)
    packed_of(30, isolated / "cache", arrays)
    packed_of(40, isolated / "home" / ".cache" / "selfsup", arrays)

    def found(data_dir=None) -> int:
        return len(load_dataset("cifar10", "train", data_dir=data_dir))

    assert found() == 40  # ~/.cache/selfsup (HOME)
    monkeypatch.setenv("SELFSUP_CACHE", str(isolated / "cache"))
    assert found() == 30  # $SELFSUP_CACHE replaces ~/.cache/selfsup
    monkeypatch.setenv("SELFSUP_DATA", str(isolated / "env"))
    assert found() == 20
    assert found(isolated / "arg") == 10  # --data-dir first
    assert found(isolated / "nothing-here") == 20  # falls through to the next folder
    assert search_dirs(isolated / "arg") == [isolated / "arg", isolated / "env", isolated / "cache"]
    # In one folder, the official folder layout comes before the packed file.
    write_cifar10_folder(isolated / "arg", arrays, np.arange(120) % 10, 4)
    assert found(isolated / "arg") == 100


def test_offline_and_not_found_is_one_error_listing_the_paths_searched(isolated) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", "train", data_dir=isolated / "mine")
    message = str(info.value)
    for directory in (isolated / "mine", isolated / "home" / ".cache" / "selfsup"):
        assert str(directory / "cifar-100-python") in message and str(directory / "cifar100.npz") in message
    assert "SELFSUP_OFFLINE" in message and "--data-dir" in message and "SELFSUP_DATA" in message


def test_unknown_source_suggests_the_closest_name() -> None:
    with pytest.raises(DataError, match="Did you mean 'cifar10'"):
        load_dataset("cifar11")
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", "training")


# -- digits -------------------------------------------------------------------------------------


def test_digits_are_the_bundled_scans_split_80_20_by_class() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    per_class = np.bincount(bunch.target)
    assert len(train) + len(test) == 1797
    assert torch.bincount(test.labels, minlength=10).tolist() == (per_class // 5).tolist()  # stratified
    assert torch.bincount(train.labels, minlength=10).tolist() == (per_class - per_class // 5).tolist()
    assert train.images.shape == (len(train), 32, 32, 3) and train.images.dtype == torch.uint8
    assert train.classes == [str(d) for d in range(10)]
    assert torch.equal(train.images[..., 0], train.images[..., 2])  # gray scans
    # Each image is its 8 x 8 scan upscaled (dark ink on white): pooled back to 8 x 8 its nearest
    # scan carries its label, and train and test use disjoint scans that together cover all 1,797.
    def nearest(ds: ImageSet) -> np.ndarray:
        pooled = torch.nn.functional.avg_pool2d(ds.images[..., :1].permute(0, 3, 1, 2).float(), 4).flatten(1)
        ink = (1 - pooled / 255) * 16
        scans = torch.from_numpy(bunch.data).float()
        return torch.cdist(ink, scans).argmin(dim=1).numpy()

    n_train, n_test = nearest(train), nearest(test)
    assert (bunch.target[n_train] == train.labels.numpy()).mean() > 0.99
    assert (bunch.target[n_test] == test.labels.numpy()).mean() > 0.99
    assert len(set(n_train) & set(n_test)) <= 2  # near-duplicate scans may map across
    assert len(set(n_train) | set(n_test)) >= 1790
    assert load_dataset("digits", "train", image_size=48).images.shape[1:] == (48, 48, 3)


# -- folders of images --------------------------------------------------------------------------


def write_folder(root: Path, arrays: np.ndarray, labels: np.ndarray, fmt: str, raw: list[bytes] | None = None,
                 labelled: bool = True) -> Path:
    """Images in ``root/<class>/`` (every third one a level deeper, to test recursion) or flat."""
    for i, (array, label) in enumerate(zip(arrays, labels)):
        folder = root / CIFAR10_CLASSES[label] if labelled else root
        if labelled and i % 3 == 0:
            folder = folder / "more"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        if raw is not None:
            path.write_bytes(raw[i])  # the original JPEG file from the dataset
        else:
            Image.fromarray(array).save(path, format=fmt.upper())
    return root


def sorted_by_name(ds: ImageSet) -> list[int]:
    return sorted(range(len(ds)), key=lambda i: Path(ds.paths[i]).name)


def test_labelled_folder_of_real_jpegs_searched_recursively(tmp_path, cifar_head) -> None:
    raw, arrays, labels = cifar_head
    root = write_folder(tmp_path / "photos", arrays[:60], labels[:60], "jpeg", raw=raw)
    ds = load_folder(root, 32)
    assert len(ds) == 60 and ds.images.shape == (60, 32, 32, 3)
    present = sorted({CIFAR10_CLASSES[c] for c in labels[:60]})
    assert ds.classes == present  # first-level subfolders, sorted; "more/" is not a class
    order = sorted_by_name(ds)
    names = [ds.classes[int(ds.labels[i])] for i in order]
    assert names == [CIFAR10_CLASSES[c] for c in labels[:60]]
    assert np.abs(ds.images[order].numpy().astype(int) - arrays[:60]).max() <= 1  # the same JPEG bytes


def test_unlabelled_folder_and_png_is_exact(tmp_path, cifar_head) -> None:
    _, arrays, labels = cifar_head
    root = write_folder(tmp_path / "flat", arrays[:30], labels[:30], "png", labelled=False)
    ds = load_folder(root, 32)
    assert ds.classes == [] and bool((ds.labels == -1).all()) and not ds.labelled
    assert np.array_equal(ds.images[sorted_by_name(ds)].numpy(), arrays[:30])


def test_folder_images_are_resized_to_the_requested_size(tmp_path, cifar_head) -> None:
    _, arrays, labels = cifar_head
    root = write_folder(tmp_path / "flat", arrays[:4], labels[:4], "png", labelled=False)
    wide = Image.fromarray(np.concatenate([arrays[4], arrays[5]], axis=1))  # 64 x 32: centre square kept
    wide.save(root / "wide.png")
    ds = load_folder(root, 16)
    assert ds.images.shape == (5, 16, 16, 3)
    # The wide image: shorter side to 16 px, then its centre square, i.e. the middle 32 columns of
    # the original (the right half of one image and the left half of the next). PIL's bicubic
    # resize of that box of the original (which reads past the box's edges as resize-then-crop
    # does) gives it exactly; a squashed, left- or right-cropped image would be far off.
    loaded = ds.images[[Path(p).name for p in ds.paths].index("wide.png")].numpy().astype(float)
    pixels = np.asarray(wide)

    def resized(box: tuple[int, int, int, int]) -> np.ndarray:
        return np.asarray(wide.resize((16, 16), Image.Resampling.BICUBIC, box=box)).astype(float)

    error = {name: np.abs(loaded - resized(box)).mean() for name, box in
             {"centre": (16, 0, 48, 32), "left": (0, 0, 32, 32), "right": (32, 0, 64, 32), "squashed": (0, 0, 64, 32)}.items()}
    assert pixels.shape == (32, 64, 3) and error["centre"] == 0, error
    assert min(error["left"], error["right"], error["squashed"]) > 10, error


def test_one_unreadable_file_is_skipped_counted_and_reported_once(tmp_path, cifar_head, capsys) -> None:
    raw, arrays, labels = cifar_head
    root = write_folder(tmp_path / "photos", arrays[:20], labels[:20], "jpeg", raw=raw)
    bad = root / CIFAR10_CLASSES[labels[0]] / "broken.jpg"
    bad.write_bytes(raw[0][: len(raw[0]) // 3])  # a truncated JPEG
    (root / "notes.txt").write_text("not an image")
    ds = load_folder(root, 32)
    assert len(ds) == 20 and ds.skipped == [str(bad)]
    err = capsys.readouterr().err
    assert err.count("skipped 1 unreadable file") == 1 and "broken.jpg" in err


def test_streamed_folder_gives_the_same_batches_and_survives_a_bad_file(tmp_path, cifar_head, capsys) -> None:
    _, arrays, labels = cifar_head
    root = write_folder(tmp_path / "photos", arrays[:40], labels[:40], "png")
    memory = load_folder(root, 32)
    streamed = load_dataset(str(root), image_size=32, max_memory_bytes=0)  # too big for memory: streamed
    assert streamed.streamed and streamed.images is None and len(streamed) == 40
    a = list(BatchLoader(memory, 16, seed=1, num_workers=0).epoch(0))
    b = list(BatchLoader(streamed, 16, seed=1, num_workers=0).epoch(0))
    assert len(a) == len(b) == 2  # 40 images, batches of 16, the last partial one dropped
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) and torch.equal(x.index, y.index)
    # A file that turns unreadable after the scan is dropped from its batch; the epoch goes on.
    Path(streamed.paths[5]).write_bytes(b"garbage")
    loader = BatchLoader(streamed, 16, seed=1, num_workers=0)
    batches = list(loader.epoch(0))
    assert len(batches) == 2 and sum(len(bt.index) for bt in batches) == 31 and loader.bad_files == 1
    assert all(5 not in bt.index.tolist() for bt in batches)
    assert "skipping unreadable image" in capsys.readouterr().err


def test_empty_folder_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        load_folder(tmp_path / "empty", 32)


# -- packed round trip through `selfsup data pack` ----------------------------------------------


def test_pack_a_png_folder_and_load_it_back_unchanged(tmp_path, cifar_head) -> None:
    _, arrays, labels = cifar_head
    root = write_folder(tmp_path / "photos", arrays[:50], labels[:50], "png")
    out = tmp_path / "photos.npz"
    assert cli(["data", "pack", str(root), str(out), "--format", "png", "--image-size", "32"]) == 0
    folder, packed = load_folder(root, 32), load_dataset(str(out))
    assert packed.classes == folder.classes and len(packed) == 50
    assert torch.equal(packed.images, folder.images) and torch.equal(packed.labels, folder.labels)


def test_pack_a_jpeg_folder_is_close(tmp_path, cifar_head) -> None:
    _, arrays, labels = cifar_head
    root = write_folder(tmp_path / "photos", arrays[:50], labels[:50], "png")
    out = tmp_path / "photos.npz"
    assert cli(["data", "pack", str(root), str(out), "--image-size", "32", "--quality", "95"]) == 0
    folder, packed = load_folder(root, 32), load_dataset(str(out))
    err = (packed.images.float() - folder.images.float()).abs()
    assert torch.equal(packed.labels, folder.labels)
    assert err.mean() < 3.0 and err.mean() > 0  # JPEG quality 95: lossy, within a few levels of 255


def test_pack_digits_keeps_both_splits(tmp_path) -> None:
    out = tmp_path / "digits.npz"
    assert cli(["data", "pack", "digits", str(out), "--format", "png"]) == 0
    for split in ("train", "test"):
        original, packed = load_dataset("digits", split), load_dataset(str(out), split)
        assert torch.equal(packed.images, original.images) and torch.equal(packed.labels, original.labels)
        assert packed.classes == original.classes
    with np.load(out) as archive:
        assert sorted(archive.files) == sorted(
            ["classes"] + [f"{s}_{k}" for s in ("train", "test") for k in ("jpeg", "offsets", "labels")]
        )


# -- the batch loader ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(data_dir) -> ImageSet:
    return load_dataset("cifar10", "test", data_dir=data_dir, limit=100, seed=0)


def test_epoch_order_is_a_permutation_drawn_from_seed_and_epoch(small_set) -> None:
    loader = BatchLoader(small_set, 10, seed=5, drop_last=False)
    seen = torch.cat([b.index for b in loader.epoch(0)])
    assert sorted(seen.tolist()) == list(range(100))  # every image once
    assert torch.equal(seen, epoch_permutation(100, 5, 0))
    again = torch.cat([b.index for b in BatchLoader(small_set, 10, seed=5, drop_last=False).epoch(0)])
    assert torch.equal(seen, again)
    other_epoch = torch.cat([b.index for b in loader.epoch(1)])
    other_seed = torch.cat([b.index for b in BatchLoader(small_set, 10, seed=6, drop_last=False).epoch(0)])
    assert not torch.equal(seen, other_epoch) and not torch.equal(seen, other_seed)
    assert torch.equal(torch.cat([b.index for b in BatchLoader(small_set, 10, shuffle=False).epoch(0)]), torch.arange(100))


def test_batches_carry_their_images_labels_and_sample_index(small_set) -> None:
    for batch in BatchLoader(small_set, 32, seed=0).epoch(0):
        assert torch.equal(batch.images, small_set.images[batch.index])
        assert torch.equal(batch.labels, small_set.labels[batch.index])
        assert batch.images.dtype == torch.uint8 and batch.index.dtype == torch.long


def test_drop_last(small_set) -> None:
    dropping = BatchLoader(small_set, 32, seed=0, drop_last=True)
    keeping = BatchLoader(small_set, 32, seed=0, drop_last=False)
    assert len(dropping) == 3 and len(keeping) == 4
    assert [len(b.index) for b in dropping.epoch(0)] == [32, 32, 32]
    assert [len(b.index) for b in keeping.epoch(0)] == [32, 32, 32, 4]
    with pytest.raises(DataError, match="larger than the dataset"):
        BatchLoader(small_set, 101, drop_last=True)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_together_are_the_single_process_batch(small_set, world_size: int) -> None:
    single = list(BatchLoader(small_set, 24, seed=2).epoch(3))
    ranks = [list(BatchLoader(small_set, 24, seed=2, rank=r, world_size=world_size).epoch(3)) for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)
    for step, whole in enumerate(single):
        parts = [ranks[r][step] for r in range(world_size)]
        assert all(len(p.index) == 24 // world_size for p in parts)
        assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
    with pytest.raises(DataError, match="not divisible"):
        BatchLoader(small_set, 10, world_size=4)


def test_resume_from_a_step_gives_the_rest_of_the_epoch(small_set) -> None:
    loader = BatchLoader(small_set, 16, seed=9)
    full = list(loader.epoch(2))
    for start in (0, 1, len(full) - 1, len(full)):
        rest = list(loader.epoch(2, start_step=start))
        assert len(rest) == len(full) - start
        assert all(torch.equal(a.index, b.index) and torch.equal(a.images, b.images) for a, b in zip(rest, full[start:]))
