"""Run logging: ``metrics.jsonl`` (one JSON line per logged step and per epoch), TensorBoard
events, and a progress bar. Only rank 0 writes."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as exc:  # tensorboard missing or broken: logs still go to jsonl
                print(f"selfsup: TensorBoard logging disabled ({exc})", file=sys.stderr)

    def log(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "step": step, **record}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key in ("time", "step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if math.isfinite(value):
                    self._writer.add_scalar(key.replace(".", "/"), value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


class Progress:
    """One bar for the whole run: epoch, step, loss, learning rate, images/s and time left."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True)

    def update(self, steps: int, epoch: int, epochs: int, **postfix: float) -> None:
        if self._bar is None:
            return
        self._bar.set_description(f"epoch {epoch + 1}/{epochs}")
        if postfix:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(steps)

    def write(self, text: str) -> None:
        (print if self._bar is None else self._bar.write)(text, file=sys.stderr)  # tqdm's keeps the bar whole

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
