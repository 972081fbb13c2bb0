"""No code runs from a checkpoint; no shell ever sees a path; symlinks in a dataset folder are
followed deliberately (cycle-safe, dangling links skipped and reported)."""

from __future__ import annotations

import ast
import hashlib
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.engine import checkpoint as ckpt
from selfsup.engine import load_method
from selfsup.errors import CheckpointError

from .conftest import EPOCHS
from .helpers import PYTHON, ROOT, assert_same_parameters, checkpoints, env, final_model, run_batch, tiny_args


class _CreatesFile:
    """Unpickling this calls ``open(target, "w")``: the file appears if the pickle is ever executed."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.target, "w"))


def _malicious(path: Path, marker: Path, kind: str) -> Path:
    payload = {"format": "selfsup-checkpoint", "version": 1, "model": {"w": torch.zeros(2)}, "hook": _CreatesFile(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle under a checkpoint's name
        path.write_bytes(pickle.dumps(payload))
    # The attacker also ships a matching checksum: the checksum cannot be what stops it.
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    return path


KINDS = ["zip", "legacy", "pickle"]


def test_malicious_checkpoints_are_refused_and_run_nothing(tmp_path: Path) -> None:
    markers = {kind: tmp_path / f"PWNED-{kind}" for kind in KINDS}
    evil = {kind: _malicious(tmp_path / kind / "step-000000009.pt", markers[kind], kind) for kind in KINDS}
    # The payloads are live: unsafe loads in a separate process do create the files.
    probe = subprocess.run(
        [PYTHON, "-c", "import pickle, sys, torch\n"
         "torch.load(sys.argv[1], weights_only=False); torch.load(sys.argv[2], weights_only=False)\n"
         "pickle.load(open(sys.argv[3], 'rb'))", *(str(evil[k]) for k in KINDS)],
        env=env(), capture_output=True, text=True, cwd=tmp_path,
    )
    assert all(m.exists() for m in markers.values()), probe.stderr
    for marker in markers.values():
        marker.unlink()
    for kind, path in evil.items():
        with pytest.raises(CheckpointError, match="refusing to load") as error:
            ckpt.load_checkpoint(path)
        assert str(path) in str(error.value) and "Only tensor checkpoints are loaded" in str(error.value), kind
        with pytest.raises(CheckpointError, match="refusing to load"):
            load_method(path)
    assert not any(m.exists() for m in markers.values())


def _images(folder: Path, count: int, size: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_processes_refuse_malicious_checkpoints_use_paths_literally_and_follow_symlinks(
    tmp_path: Path, reference_run: Path, reference_model
) -> None:
    marker = tmp_path / "PWNED"
    # A run whose newest checkpoint was replaced by a malicious one (with a matching checksum).
    resumed = tmp_path / "resumed" / "run"
    shutil.copytree(reference_run, resumed)
    newest = checkpoints(resumed)[0]
    _malicious(newest, marker, "zip")
    loose = _malicious(tmp_path / "evil.pt", marker, "zip")

    # Paths full of shell syntax: used as names, never interpreted.
    weird_data = tmp_path / "imgs $(touch PWNED) ; touch PWNED `touch PWNED` 'q' \"dq\" *"
    _images(weird_data, 16)
    weird_runs = tmp_path / "runs $(touch PWNED)"
    weird_name = "n; touch PWNED && echo | touch PWNED"

    # A dataset assembled with symlinks: a class folder and an image that live outside it, a link
    # back to the dataset (a cycle) and a dangling link.
    outside, dataset = tmp_path / "outside", tmp_path / "linked"
    _images(outside / "b", 2, seed=1)
    _images(dataset / "cls_a", 2, seed=2)
    Image.new("RGB", (12, 12), (10, 200, 30)).save(outside / "c.png")
    (dataset / "cls_b").symlink_to(outside / "b", target_is_directory=True)
    (dataset / "cls_a" / "link.png").symlink_to(outside / "c.png")
    (dataset / "cls_a" / "loop").symlink_to(dataset, target_is_directory=True)
    (dataset / "cls_a" / "dangling.png").symlink_to(tmp_path / "gone.png")

    cases = {
        "resume past a malicious checkpoint": tiny_args(resumed.parent, epochs=EPOCHS) + ["--resume"],
        "eval a malicious checkpoint": ["eval", "knn", str(loose), "--device", "cpu"],
        "info of a folder with shell syntax": ["data", "info", str(weird_data)],
        "train with shell syntax everywhere": [
            "train", "--data", str(weird_data), "--backbone", "tiny", "--batch-size", "16", "--epochs", "1",
            "--image-size", "16", "--device", "cpu", "--run-dir", str(weird_runs), "--name", weird_name,
            "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "progress=false",
        ],
        "info of a symlinked folder": ["data", "info", str(dataset)],
    }
    results = run_batch(cases, cwd=tmp_path)
    for name, result in results.items():
        assert result["escaped"] is None, f"{name}: {result['escaped']}"

    result = results["resume past a malicious checkpoint"]
    assert result["status"] == 0, result
    assert f"refusing to load '{newest}': it contains Python objects" in result["stderr"]
    assert "step-000000063.pt (epoch 3, step 63)" in result["stderr"]
    assert_same_parameters(final_model(resumed), reference_model)

    result = results["eval a malicious checkpoint"]
    assert result["status"] == 2 and f"refusing to load '{loose}'" in result["stderr"], result

    assert not list(tmp_path.rglob("PWNED")) and not (ROOT / "PWNED").exists(), "something executed a payload"

    result = results["info of a folder with shell syntax"]
    assert result["status"] == 0 and "16 training images" in result["stdout"], result
    result = results["train with shell syntax everywhere"]
    assert result["status"] == 0, result
    assert (weird_runs / weird_name / "config.yaml").is_file() and checkpoints(weird_runs / weird_name)

    result = results["info of a symlinked folder"]
    assert result["status"] == 0, result
    # cls_a: 2 images + the linked one; cls_b (a linked folder): 2; the cycle is walked once.
    assert "5 training images" in result["stdout"] and "2 classes" in result["stdout"], result
    assert "classes: cls_a, cls_b" in result["stdout"]
    assert "skipped 1 unreadable file(s)" in result["stderr"] and "dangling.png" in result["stderr"], result


_FORBIDDEN_CALLS = {
    ("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execv"), ("os", "execvp"), ("os", "spawnl"),
    ("pickle", "load"), ("pickle", "loads"), ("marshal", "load"), ("marshal", "loads"), ("shelve", "open"),
    ("yaml", "unsafe_load"), ("yaml", "full_load"), ("joblib", "load"), ("dill", "load"), ("dill", "loads"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_the_code_never_invokes_a_shell_or_an_unsafe_loader() -> None:
    """Every checkpoint load is ``torch.load(weights_only=True)``; no shell, eval/exec, pickle,
    unsafe YAML or pickled NumPy anywhere in the package (the CIFAR reader's restricted unpickler,
    which only admits NumPy arrays, is the one deliberate exception)."""
    problems = []
    files = sorted((ROOT / "selfsup").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            const = {k: v.value for k, v in keywords.items() if isinstance(v, ast.Constant)}
            if const.get("shell") is True:
                problems.append(f"{where}: shell=True")
            if name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where}: {name}()")
            if tuple(name.split(".")[-2:]) in _FORBIDDEN_CALLS:
                problems.append(f"{where}: {name}()")
            if name.endswith("torch.load") and const.get("weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("yaml.load",) and "Safe" not in _dotted(keywords.get("Loader", ast.Name(id="?"))):
                problems.append(f"{where}: yaml.load without a SafeLoader")
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and const.get("allow_pickle") is True:
                problems.append(f"{where}: np.load(allow_pickle=True)")
            if name.split(".")[0] == "subprocess" and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                problems.append(f"{where}: subprocess with a command string")
    assert not problems, "\n".join(problems)
