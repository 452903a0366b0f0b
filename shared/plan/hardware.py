"""The hardware `pgolf plan` knows: one row per name, every figure with its source.

Datasheet figures are the vendors' published peaks (dense, no sparsity); what a run
achieves of them is the calibration's business (shared/plan/constants.py), not this
table's. `cpu` is this machine as it is when planned: its matmul rate is probed (a shared
machine's speed depends on its load), the rest follows in the development machine's
proportions (docs/PLAN.md).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache

from shared.errors import PgolfError


@dataclass(frozen=True)
class Hardware:
    """One machine: `devices` identical accelerators (or one CPU) and how they are joined."""

    name: str
    chip: str
    kind: str                  # gpu | mac | cpu
    devices: int
    tflops: float              # dense peak of the training dtype (bf16 on GPUs and Macs, fp32 on a CPU), TFLOP/s
    mem_bw_gbs: float          # memory bandwidth per device, GB/s
    mem_gib: float             # memory a run may use per device, GiB (Macs: the GPU's share of unified memory)
    link_gbs: float            # per-device all-reduce bus bandwidth, GB/s (0: one device)
    launch_us: float           # exposed cost of one kernel (GPU) or one eager op dispatch (CPU), microseconds
    calibrated: bool           # whether published or measured runs on this hardware fitted the constants
    sources: dict[str, str] = field(default_factory=dict)


_H100 = {
    "tflops": "989.4 TFLOP/s dense BF16 tensor core, NVIDIA H100 SXM5 datasheet (1,979 with sparsity)",
    "mem_bw_gbs": "3.35 TB/s HBM3, NVIDIA H100 SXM5 datasheet",
    "mem_gib": "80 GB HBM3 (datasheet); nvidia-smi reports 81,559 MiB = 79.6 GiB on 'H100 80GB HBM3'",
    "link_gbs": "NVLink 4: 900 GB/s per GPU both directions (datasheet), 450 GB/s each way",
    "launch_us": "a few microseconds per CUDA kernel launch (CUDA C++ Best Practices Guide, 'kernel launch "
                 "overhead'); 3 us taken, the calibration absorbs the rest",
}
_H200 = {
    **_H100,
    "mem_bw_gbs": "4.8 TB/s HBM3e, NVIDIA H200 SXM datasheet",
    "mem_gib": "141 GB HBM3e, NVIDIA H200 SXM datasheet (131 GiB)",
    "tflops": "989.4 TFLOP/s dense BF16, NVIDIA H200 SXM datasheet (the H100's compute)",
}
_MAC = ("GPU share of unified memory: ~75% of the RAM (decimal GB, in GiB), about what macOS lets Metal "
        "use by default (MTLDevice.recommendedMaxWorkingSetSize); the rest is the system's")
_MAC_LAUNCH = "Metal command-buffer dispatch, ~10 us per kernel (uncalibrated estimate)"

HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("8xh100", "NVIDIA H100 SXM5 80GB", "gpu", 8, 989.4, 3350.0, 79.6, 450.0, 3.0, True, _H100),
    Hardware("1xh100", "NVIDIA H100 SXM5 80GB", "gpu", 1, 989.4, 3350.0, 79.6, 0.0, 3.0, True, _H100),
    Hardware("8xh200", "NVIDIA H200 SXM 141GB", "gpu", 8, 989.4, 4800.0, 131.0, 450.0, 3.0, False, _H200),
    Hardware("h200", "NVIDIA H200 SXM 141GB", "gpu", 1, 989.4, 4800.0, 131.0, 0.0, 3.0, False, _H200),
    Hardware("m1-16gb", "Apple M1 (8-core GPU), 16 GB", "mac", 1, 2.6, 68.25, 11.2, 0.0, 10.0, False, {
        "tflops": "2.6 TFLOP/s FP32 (Apple M1 announcement, Nov 2020); MLX bf16 runs at about the fp32 rate",
        "mem_bw_gbs": "68.25 GB/s LPDDR4X (Apple M1 specifications)", "mem_gib": _MAC, "launch_us": _MAC_LAUNCH}),
    Hardware("m2-16gb", "Apple M2 (10-core GPU), 16 GB MacBook Air", "mac", 1, 3.6, 100.0, 11.2, 0.0, 10.0, False, {
        "tflops": "3.6 TFLOP/s FP32 (Apple M2 announcement, June 2022)",
        "mem_bw_gbs": "100 GB/s LPDDR5 (Apple M2 specifications)", "mem_gib": _MAC, "launch_us": _MAC_LAUNCH}),
    Hardware("m4-32gb", "Apple M4 (10-core GPU), 32 GB", "mac", 1, 4.1, 120.0, 22.4, 0.0, 10.0, False, {
        "tflops": "~4.1 TFLOP/s FP32: 10 cores x 128 FP32 lanes x 2 x ~1.6 GHz (derived, not an Apple figure)",
        "mem_bw_gbs": "120 GB/s LPDDR5X (Apple M4 specifications)", "mem_gib": _MAC, "launch_us": _MAC_LAUNCH}),
    Hardware("m4-max-128gb", "Apple M4 Max (40-core GPU), 128 GB", "mac", 1, 16.4, 546.0, 89.4, 0.0, 10.0, False, {
        "tflops": "~16.4 TFLOP/s FP32: 40 cores x 128 FP32 lanes x 2 x ~1.6 GHz (derived, not an Apple figure)",
        "mem_bw_gbs": "546 GB/s LPDDR5X (Apple M4 Max specifications)", "mem_gib": _MAC, "launch_us": _MAC_LAUNCH}),
)}

# The CPU row is this machine as it is when planned: a shared 2-core machine runs 10x slower under
# other people's load than idle, so its peak is measured, not looked up: a fp32 matmul probe (numpy,
# ~0.3 s, once per process). Bandwidth and per-op dispatch follow the probe in assumed proportions
# (about 12 GB/s of streaming and 12 us per eager op beside 200 GFLOP/s on an idle 2-vCPU EPYC);
# the CPU calibration's fitted fraction absorbs what they miss (docs/PLAN.md).
CPU_BW_GB_PER_GFLOP = 0.06     # streaming GB/s per matmul GFLOP/s
CPU_OP_US_AT_100 = 24.0        # eager op dispatch in microseconds when the probe reads 100 GFLOP/s


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 16.0


@lru_cache(maxsize=1)
def cpu_probe_gflops() -> float:
    """fp32 matmul GFLOP/s of this machine now (numpy's BLAS, 512 x 512, ~0.3 s; once per process)."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512), dtype=np.float32)
    b = rng.standard_normal((512, 512), dtype=np.float32)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3 or n < 3:
        a @ b
        n += 1
    return 2.0 * 512 ** 3 * n / (time.perf_counter() - t0) / 1e9


def cpu_hardware(gflops: float | None = None) -> Hardware:
    """This machine's CPU (torch fp32), at the matmul rate `gflops` (default: the probe's)."""
    n = max(1, os.cpu_count() or 1)
    g = gflops or cpu_probe_gflops()
    src = {
        "tflops": f"{g:.1f} GFLOP/s fp32 matmul measured now (numpy probe, {n} cores; load average "
                  f"{os.getloadavg()[0]:.1f})",
        "mem_bw_gbs": f"{CPU_BW_GB_PER_GFLOP:g} GB/s per probed GFLOP/s (the dev machine's ratio)",
        "mem_gib": "MemTotal of /proc/meminfo (or sysconf) on this machine",
        "launch_us": f"{CPU_OP_US_AT_100:g} us per eager torch op at 100 probed GFLOP/s, scaled by the probe",
    }
    return Hardware("cpu", f"this machine's CPU, {n} cores, torch fp32", "cpu", 1, g / 1000.0,
                    CPU_BW_GB_PER_GFLOP * g, _memory_gib(), 0.0, CPU_OP_US_AT_100 * 100.0 / g, True, src)


def names() -> list[str]:
    return [*HARDWARE, "cpu"]


def get_hardware(name: str) -> Hardware:
    """The row for `name` (case-insensitive); a one-line error naming the valid ones otherwise."""
    key = name.strip().lower()
    if key == "cpu":
        return cpu_hardware()
    if key in HARDWARE:
        return HARDWARE[key]
    raise PgolfError(f"--hardware {name!r} is not known: choose one of {', '.join(names())} "
                     "(`pgolf plan --hardware list` shows their figures)")


def with_devices(hw: Hardware, devices: int) -> Hardware:
    """The same chip, `devices` of them (the plan of one GPU of an 8-GPU pod, or gpu-check's single GPU)."""
    return replace(hw, devices=devices, link_gbs=hw.link_gbs if devices > 1 else 0.0)


def detect(backend: str, nproc: int) -> str:
    """A best guess at the hardware a `pgolf train` is about to use, from files only (no framework import):
    NVIDIA GPUs by /proc/driver/nvidia, a Mac by its RAM, otherwise this CPU."""
    gpus = "/proc/driver/nvidia/gpus"
    if backend == "torch" and os.path.isdir(gpus):
        model = ""
        for d in sorted(os.listdir(gpus)):
            try:
                with open(os.path.join(gpus, d, "information"), encoding="utf-8") as f:
                    model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("Model")), "")
            except OSError:
                continue
            break
        low = model.lower()
        if "h200" in low:
            return "8xh200" if nproc >= 8 else "h200"
        if "h100" in low:
            return "8xh100" if nproc >= 8 else "1xh100"
    if sys.platform == "darwin" and backend == "mlx":
        ram = _memory_gib()
        return "m4-max-128gb" if ram > 64 else "m4-32gb" if ram > 20 else "m2-16gb"
    return "cpu"
