"""PyTorch runtime set-up: process group, rank/world, device, compute dtype, provenance.

`init()` is the one place that reads torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK) and starts the process group: NCCL on GPUs, gloo
on CPU, with a timeout so that a rank stuck in a collective whose peer died
gives up with an error instead of waiting forever (torchrun itself also
stops the surviving workers when one exits non-zero). Under torchrun each
worker also asks for SIGKILL when its agent dies (cuda_train/launch.py
`die_with_parent`), so no worker outlives a killed agent. Everything else in
the package asks the returned `Runtime` rather than `torch.distributed`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from shared.errors import PgolfError

# A collective that waits this long means a peer is gone: fail rather than hang.
# Generous enough for a slow first torch.compile on one rank while the others wait.
PROCESS_GROUP_TIMEOUT_S = float(os.environ.get("PGOLF_PG_TIMEOUT_S", "600"))
# How long `wait_for_ranks` waits for the slowest rank's work (uneven TTT shares): far past any
# evaluation budget; a rank that died ends the job through torchrun long before.
READY_TIMEOUT_S = float(os.environ.get("PGOLF_READY_TIMEOUT_S", "7200"))


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wait_for_ranks(self, tag: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once every rank has called this with the same `tag`: a barrier through the process group's
        key-value store, polled, so that waiting for a rank that still works never meets the collectives'
        timeout (the collective that follows finds every rank there). A no-op on one process."""
        if not self.distributed:
            return
        store = dist.distributed_c10d._get_default_store()
        key = f"pgolf/ready/{tag}"
        store.add(key, 1)
        deadline, pause = time.monotonic() + timeout_s, 0.001
        while store.add(key, 0) < self.world_size:
            if time.monotonic() > deadline:
                raise PgolfError(f"rank {self.rank} waited {timeout_s:.0f} s for the other ranks at {tag!r}; "
                                 "one is stuck or gone (PGOLF_READY_TIMEOUT_S sets the wait)")
            time.sleep(pause)
            pause = min(0.05, 2 * pause)

    def share_bytes(self, tag: str, data: bytes | None, timeout_s: float = READY_TIMEOUT_S) -> bytes:
        """Rank 0's `data` on every rank, through the process group's key-value store: the others poll for
        it (no collective's timeout while rank 0 works), and rank 0 drops it once every rank has read it."""
        if not self.distributed:
            return data
        store = dist.distributed_c10d._get_default_store()
        key = f"pgolf/share/{tag}"
        if self.rank == 0:
            store.set(key, data)
        else:
            deadline, pause = time.monotonic() + timeout_s, 0.001
            while not store.check([key]):
                if time.monotonic() > deadline:
                    raise PgolfError(f"rank {self.rank} waited {timeout_s:.0f} s for rank 0's {tag!r}; it is stuck "
                                     "or gone (PGOLF_READY_TIMEOUT_S sets the wait)")
                time.sleep(pause)
                pause = min(0.05, 2 * pause)
            data = bytes(store.get(key))
        self.wait_for_ranks(f"{tag}/read", timeout_s)
        if self.rank == 0:
            store.delete_key(key)
        return data

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (`sum` or `max`); a no-op on one process."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise PgolfError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def init(device: str | None = None) -> Runtime:
    """(rank, world size, device) for this process; starts the process group under torchrun.

    `device`: "cuda" or "cpu" to force one; by default CUDA when available.
    """
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a torchrun worker: end with the agent (idempotent)
        from cuda_train.launch import die_with_parent

        die_with_parent()
    local_rank = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise PgolfError("device cuda was requested but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise PgolfError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        # TF32 for any fp32 matmul left outside autocast (the optimizer's own maths stays exact enough).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_S), **kwargs)
    return Runtime(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        # Every rank reaches teardown before any closes its connections: a rank that destroys
        # the group while a peer is still in its last collective can abort at exit under gloo.
        dist.barrier()
        dist.destroy_process_group()


def compute_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`train.compute_dtype`: auto = bf16 on CUDA, fp32 on CPU (bf16 on CPU is allowed and ~4x faster)."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[requested]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA allocation on this rank's GPU, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024))


def nvidia_smi() -> str | None:
    """`nvidia-smi` output for the log (modded-nanogpt logs it too), or None without a driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance_extra(rt: Runtime, dtype: torch.dtype) -> dict[str, str]:
    """Torch-side facts for `shared.run.rundir.provenance`."""
    info = {
        "torch": torch.__version__,
        "device": device_name(rt.device),
        "world_size": str(rt.world_size),
        "compute_dtype": dtype_name(dtype),
    }
    if rt.is_cuda:
        info["cuda"] = str(torch.version.cuda)
        info["gpus"] = str(torch.cuda.device_count())
    return info
