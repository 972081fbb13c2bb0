"""Shared by the benchmark scripts: hardware description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
DEFAULT_DATA_DIR = Path(os.environ.get("SELFSUP_TEST_DATA", ROOT.parent / "shared" / "data"))


def hardware(device: torch.device | str) -> str:
    """A one-line description of the machine the numbers were measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        gpu = f"{name} ({memory:.0f} GiB)"
    else:
        gpu = "no GPU"
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{gpu}; {cpu}, {os.cpu_count()} cores; torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def update_section(name: str, markdown: str, path: Path = BENCHMARKS) -> None:
    """Replace the section between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def peak_memory_mib(device: torch.device) -> float:
    """Peak device memory (CUDA) or peak resident memory of this process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
