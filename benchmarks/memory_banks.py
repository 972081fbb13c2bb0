"""Memory of the memory banks of InstDisc and CMC, and of MoCo's key queue: allocated on the CPU, bytes reported.

A bank holds one float32 vector of ``dim`` = 128 per training image (``selfsup.nn.memory.MemoryBank``);
InstDisc keeps one, CMC one per view. Besides the banks, the figures a step needs on the device for
its negatives are given by formula (not allocated): NCE gathers ``B x m x 128`` bank rows per
direction (or scores ``B x N`` against the whole bank when ``N <= 8 m``), the exact softmax scores
``B x N``.

Usage:  python benchmarks/memory_banks.py [--write]      (--write updates BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfsup.nn.memory import MemoryBank  # noqa: E402

DATASETS = {"CIFAR-10": 50_000, "ImageNet-1k": 1_281_167}
DIM = 128


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f} MiB"


def bank_bytes(size: int, dim: int = DIM) -> int:
    """Allocate a bank (random unit vectors, as the methods do) and return its buffer's bytes."""
    bank = MemoryBank(size, dim).bank
    return bank.numel() * bank.element_size()


def report() -> str:
    lines = [
        "## Memory banks",
        "",
        f"From `benchmarks/memory_banks.py` (banks allocated on the CPU, torch {torch.__version__}; the",
        "size does not depend on the device). One float32 vector of 128 per training image.",
        "",
        "| data | N | InstDisc: one bank | CMC: two banks (L, ab) |",
        "|---|---|---|---|",
    ]
    for name, size in DATASETS.items():
        one = bank_bytes(size)
        lines.append(f"| {name} | {size:,} | {one:,} B ({mib(one)}) | {2 * one:,} B ({mib(2 * one)}) |")
    batch, m_instdisc, m_cmc = 256, 4096, 16384
    gathered = batch * m_instdisc * DIM * 4
    lines += [
        "",
        f"Per step, besides the banks (by formula; batch {batch}, float32): InstDisc's NCE with",
        f"m = {m_instdisc:,} gathers {batch} x {m_instdisc:,} x {DIM} bank rows, {mib(gathered)} kept for the backward;",
        f"CMC's {m_cmc:,} negatives gather {mib(batch * m_cmc * DIM * 4)} per direction, two directions. Where",
        f"N <= 8 m (CIFAR-10 with CMC's {m_cmc:,}) the scores come from one B x N matmul instead",
        f"({mib(batch * 50_000 * 4)} of scores on CIFAR-10), as do InstDisc's exact-softmax ones.",
    ]
    return "\n".join(lines + queue_lines())


# (setting, queue size K, batch of queries per process B): MoCo's key queue of 128-d keys.
QUEUES = [
    ("CIFAR-10 (moco_v1/v2 default at <= 64 px)", 4096, 256),
    ("ImageNet (paper: 8 GPUs x 32)", 65536, 32),
    ("ImageNet, one GPU with the whole batch of 256", 65536, 256),
]


def queue_lines() -> list[str]:
    """MoCo's queue (``selfsup.nn.queue.KeyQueue``, allocated and measured) and its per-step logits."""
    from selfsup.nn.queue import KeyQueue

    lines = [
        "",
        "MoCo v1/v2 keep a queue of keys instead of a bank: its size does not grow with N. Every",
        "process holds the whole queue (the keys of all ranks are gathered before they are enqueued),",
        "so the figures are per GPU. One step's logits are B x (1 + K) float32 values (kept with",
        "their gradient for the backward); the loss also normalizes a transient copy of the queue.",
        "",
        "| MoCo queue | K x D | queue buffer | logits of one step |",
        "|---|---|---|---|",
    ]
    for name, size, batch in QUEUES:
        queue = KeyQueue(size, DIM)
        held = sum(b.numel() * b.element_size() for b in queue.buffers())
        lines.append(f"| {name} | {size:,} x {DIM} | {held:,} B ({mib(held)}) | {mib(batch * (1 + size) * 4)} (B = {batch}) |")
    lines += [
        "",
        "MoCo v3 has no queue: its logits are B x (W B) per process and view (batch 4,096 on 16 GPUs:",
        "256 x 4,096 x 4 B = 4.0 MiB, twice for the symmetrized loss).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    text = report()
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import update_section

        update_section("memory-banks", text)


if __name__ == "__main__":
    main()
