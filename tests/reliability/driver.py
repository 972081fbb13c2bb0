"""``python driver.py ARGS``: ``selfsup ARGS`` in a real process, with faults injected as the JSON
in ``$SELFSUP_FAULTS`` asks (the tests' only way in; selfsup itself has no test hooks):

- ``{"nonfinite_at_step": N, "value": "nan"|"inf"}``: the SimCLR loss of training step N (0-based;
  the step the engine sets in ``method.progress`` before each step, so the estimate's probe steps
  before training do not count) is multiplied by NaN or has Inf added, before backward;
- ``{"pause_before_rename": K, "suffix": ".pt"|".sha256"}``: when the K-th file of a checkpoint
  with that suffix (1-based, in this process) is complete on disk under its temporary name, print
  ``FAULT paused <tmp> -> <final>`` to stderr and sleep, so the test can kill the process there;
- ``{"pause_at_step": N}``: when the run has done N steps, before it trains step N + 1, print
  ``FAULT paused at step N`` to stderr and wait for SIGTERM or SIGINT (handed on to selfsup's
  own handler, after which step N + 1 runs as usual) or a SIGKILL. A test signals a process
  known to be at that step, so the run can never end before its signal, however loaded the
  machine.
- ``{"block_at_step": N, "seconds": S}``: training step N spends S seconds inside one C++ call that
  holds no GIL and is not interrupted by signals (``torch.futures.Future.wait``), as a long
  convolution on a large batch does; ``FAULT blocking`` is printed to stderr when it starts.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main() -> int:
    faults = json.loads(os.environ.get("SELFSUP_FAULTS") or "{}")
    if "nonfinite_at_step" in faults:
        from selfsup.methods.simclr import SimCLR  # the tests' method; forward runs once per step

        real_forward = SimCLR.forward
        target, value = int(faults["nonfinite_at_step"]), faults.get("value", "nan")

        def forward(self, views, index=None):  # noqa: ANN001, ANN202
            out = real_forward(self, views, index)
            if self.progress.step == target:
                out["loss"] = out["loss"] * float("nan") if value == "nan" else out["loss"] + float("inf")
            return out

        SimCLR.forward = forward
    if "block_at_step" in faults:
        import threading

        import torch

        from selfsup.methods.simclr import SimCLR

        slow_forward = SimCLR.forward
        block_at, seconds = int(faults["block_at_step"]), float(faults.get("seconds", 12))

        def blocking_forward(self, views, index=None):  # noqa: ANN001, ANN202
            if self.progress.step == block_at and self.training:
                done = torch.futures.Future()
                threading.Timer(seconds, lambda: done.set_result(None)).start()
                print("FAULT blocking", file=sys.stderr, flush=True)
                done.wait()
                print("FAULT unblocked", file=sys.stderr, flush=True)
            return slow_forward(self, views, index)

        SimCLR.forward = blocking_forward
    if "pause_before_rename" in faults:
        real_replace = os.replace
        target, suffix = int(faults["pause_before_rename"]), faults.get("suffix", ".pt")
        seen = {"n": 0}

        def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            name = os.fspath(dst)
            if os.path.basename(name).startswith("step-") and name.endswith(suffix):
                seen["n"] += 1
                if seen["n"] == target:
                    print(f"FAULT paused {os.fspath(src)} -> {name}", file=sys.stderr, flush=True)
                    time.sleep(3600)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    if "pause_at_step" in faults:
        from selfsup.engine.trainer import Trainer

        real_train_step = Trainer.train_step
        pause_at = int(faults["pause_at_step"])

        def train_step(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if self.state.step == pause_at:
                wait_for_stop_signal(f"FAULT paused at step {pause_at}")
            return real_train_step(self, *args, **kwargs)

        Trainer.train_step = train_step
    from selfsup.cli import main as selfsup_main

    return selfsup_main(sys.argv[1:])


def wait_for_stop_signal(message: str) -> None:
    """Print ``message`` to stderr, then sleep until SIGTERM or SIGINT arrives; the handlers in
    place (selfsup's) are put back and receive it."""
    received: list[int] = []
    previous = {}

    def on_signal(signum, frame):  # noqa: ANN001, ANN202
        received.append(signum)
        for other, handler in previous.items():
            signal.signal(other, handler)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        else:  # the default action (or ignoring it): deliver it again to the handler put back
            os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, on_signal)
    print(message, file=sys.stderr, flush=True)  # only now: a signal from here on is caught
    while not received:
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
