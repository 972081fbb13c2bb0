"""Where a run computes and how fast it can: the device, the precision and memory layout that run
at full speed there, and the CPU's threads.

On CUDA, bf16 autocast and channels_last are the usual choice. Many CPUs now compute bf16 natively
too (x86 with AVX512-BF16 or AMX): there one SimCLR step with bf16 autocast and channels_last
measured 2.8x the float32 contiguous step on the tiny convnet at batch 256 (186 -> 514 images/s
on a 2-core AMD EPYC with avx512_bf16; BENCHMARKS.md, ``benchmarks/throughput.py --precision-grid``)
and 2.6x on ResNet-18 at batch 64 (issue 14's measurement). ``torch.compile`` of the same step
gave 0.99x after 23 s of compiling, so it stays off by default (``compile: true`` turns it on). Losses, softmaxes, Sinkhorn, EMA updates and BN
statistics stay float32 whatever the autocast (each loss leaves autocast itself), exactly as on CUDA.
Older CPUs emulate bf16 slowly, so ``precision: auto`` keeps float32 there.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available; use device=cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


# CPU features with which oneDNN computes bf16 matmuls and convolutions natively (not emulated).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_capabilities() -> dict[str, object]:
    """PyTorch's view of the CPU (``torch.cpu.get_capabilities``: instruction sets, physical cores);
    on builds without it, the flags of /proc/cpuinfo."""
    with suppress(RuntimeError, AttributeError):
        return dict(torch.cpu.get_capabilities())
    flags: list[str] = []
    with suppress(OSError), open("/proc/cpuinfo") as handle:
        flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    return {flag: True for flag in flags}


def cpu_native_bf16() -> str | None:
    """The CPU feature that makes bf16 fast here (``avx512_bf16`` or ``amx_bf16``), or None."""
    return next((flag for flag in NATIVE_BF16_FLAGS if cpu_capabilities().get(flag)), None)


@dataclass(frozen=True)
class Compute:
    """What a run computes in: the autocast dtype (None: float32), whether 4-D tensors are
    channels_last, and one line that says why (printed when a run starts)."""

    autocast_dtype: torch.dtype | None
    channels_last: bool
    reason: str

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for ``precision: bf16``, and for ``auto`` on CUDA and on CPUs that compute
    bf16 natively; float32 (None) otherwise."""
    return choose_compute(precision, False, device).autocast_dtype


def choose_compute(precision: str, channels_last: bool, device: torch.device) -> Compute:
    """Resolve ``precision`` (auto | fp32 | bf16) and ``channels_last`` for ``device``."""
    if precision in ("bf16", "fp32"):
        dtype, why = torch.bfloat16 if precision == "bf16" else None, f"precision={precision}"
    elif device.type == "cuda":
        dtype, why = torch.bfloat16, "auto: CUDA"
    elif device.type == "cpu" and (flag := cpu_native_bf16()):
        dtype, why = torch.bfloat16, f"auto: this CPU computes bf16 natively ({flag})"
    else:
        dtype, why = None, f"auto: {'this CPU has no native bf16 (AVX512-BF16 or AMX)' if device.type == 'cpu' else device.type}"
    # NHWC is faster on CUDA (tensor cores) and on the CPU (oneDNN's blocked convolutions), in
    # float32 as in bf16 (benchmarks/throughput.py --precision-grid); other devices keep NCHW.
    layout = bool(channels_last) and device.type in ("cuda", "cpu")
    line = f"{'bf16 autocast' if dtype else 'float32'} ({why}), {'channels_last' if layout else 'contiguous (NCHW)'} tensors"
    return Compute(dtype, layout, line)


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads share one core's arithmetic units)."""
    cores = cpu_capabilities().get("num_physical_cores")
    return cores if isinstance(cores, int) and cores > 0 else max(1, (os.cpu_count() or 2) // 2)


def configure_cpu_threads() -> int:
    """Intra-op threads = physical cores, unless the user set ``OMP_NUM_THREADS`` or
    ``TORCH_NUM_THREADS``; returns the count. Idle OpenMP threads sleep rather than spin
    (``OMP_WAIT_POLICY=PASSIVE``, set in ``selfsup/__init__.py`` before torch loads: on a busy
    machine spinning threads made small tensor ops up to 100x slower, on a quiet one the
    difference is within noise)."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("TORCH_NUM_THREADS"):
        return torch.get_num_threads()
    threads = physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
