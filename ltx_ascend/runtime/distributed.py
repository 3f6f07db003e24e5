"""Multi-device runs over torch.distributed: the process group, device binding, and the collectives.

`torchrun` starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; `init_world`
binds each rank to device LOCAL_RANK of its kind and opens the process group with the backend
that kind needs (hccl on Ascend through torch_npu, nccl on CUDA, gloo on the CPU). Ranks are laid
out as a `cfg x ulysses` grid, Ulysses innermost (neighbouring ranks, which share the fastest
links, exchange a sequence every attention; the guidance groups exchange one result per step).
Only `torch.distributed` moves data; this module is the one place that calls it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as dev
from ltx_ascend.validation import env_int

PROCESS_GROUP_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
_FIX = "as `torchrun --nproc-per-node N ltx-run ... --parallel cfg=C,ulysses=U` with C x U = N"


@dataclass(frozen=True)
class Layout:
    """`--parallel cfg=C,ulysses=U`: C guidance-pass groups times U sequence shards."""

    cfg: int = 1
    ulysses: int = 1

    @property
    def size(self) -> int:
        return self.cfg * self.ulysses

    @classmethod
    def parse(cls, text: str) -> Layout:
        values = {"cfg": 1, "ulysses": 1}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, _, value = part.partition("=")
            if key not in values or not value.isdigit() or int(value) < 1:
                raise UserError(f"--parallel {text}: expected cfg=C,ulysses=U with positive integers (e.g. cfg=2)")
            values[key] = int(value)
        return cls(**values)

    def __str__(self) -> str:
        return f"cfg={self.cfg},ulysses={self.ulysses}"


def launched_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun sets them, or None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, size = env_int(os.environ, "RANK"), env_int(os.environ, "WORLD_SIZE", minimum=1)
    local = env_int(os.environ, "LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if rank >= size:
        raise UserError(f"environment RANK={rank} is not below WORLD_SIZE={size}: start the ranks with torchrun")
    return rank, size, local


def check_layout(layout: Layout) -> tuple[int, int, int]:
    """The launch matches the layout (before anything loads); returns launched_ranks()."""
    ranks = launched_ranks()
    if ranks is None:
        if layout.size > 1:
            raise UserError(f"--parallel {layout} needs {layout.size} processes: launch {_FIX}")
        return 0, 1, 0
    if ranks[1] != layout.size:
        raise UserError(
            f"--parallel {layout} is {layout.cfg} x {layout.ulysses} = {layout.size} ranks but torchrun "
            f"started {ranks[1]}: make C x U equal --nproc-per-node"
        )
    return ranks


def check_heads(layout: Layout, heads: dict[str, int]) -> None:
    """Ulysses gives each rank heads / U heads of every self-attention."""
    for name, count in heads.items():
        if count % layout.ulysses:
            raise UserError(
                f"--parallel {layout}: the {name} attention has {count} heads, not divisible by ulysses="
                f"{layout.ulysses}; pick U dividing {count} and put the other ranks in cfg"
            )


class World:
    """This rank's place in the grid and its two process groups (None: that axis has size 1)."""

    def __init__(self, layout: Layout, rank: int, local_rank: int, device: torch.device) -> None:
        self.layout = layout
        self.rank = rank
        self.local_rank = local_rank
        self.device = device
        self.cfg_rank, self.ulysses_rank = divmod(rank, layout.ulysses)
        self.cfg_group = self.ulysses_group = None
        if dist.is_initialized() and layout.size > 1:
            # every rank must create every group, in the same order
            for c in range(layout.cfg):
                group = dist.new_group([c * layout.ulysses + u for u in range(layout.ulysses)])
                if c == self.cfg_rank:
                    self.ulysses_group = group
            for u in range(layout.ulysses):
                group = dist.new_group([c * layout.ulysses + u for c in range(layout.cfg)])
                if u == self.ulysses_rank:
                    self.cfg_group = group

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def bind_device(device: torch.device, local_rank: int) -> torch.device:
    """Device `local_rank` of the chosen kind, made current (the CPU has one 'device' per process)."""
    if device.type == "cpu":
        return device
    bound = torch.device(device.type, local_rank)
    dev.set_device(bound)
    return bound


def init_world(layout: Layout, device: torch.device) -> World:
    """Bind this rank to its device and open the process group (once per process)."""
    rank, size, local_rank = check_layout(layout)
    if size == 1:
        return World(layout, 0, 0, device)
    device = bind_device(device, local_rank)
    if not dist.is_initialized():
        backend = PROCESS_GROUP_BACKENDS[device.type]
        if device.type == "npu":  # torch_npu registers the hccl backend with torch.distributed on import
            dev.require_npu_backend()
        # the device is already current (bind_device): torch_npu's documented pattern is set_device, then
        # init_process_group("hccl"); NCCL also takes the device to bind its communicator eagerly
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        atexit.register(close)  # a process group left open aborts the interpreter at exit
    return World(layout, rank, local_rank, device)


# ---------------------------------------------------------------------------------------- collectives


def all_gather_cat(tensor: torch.Tensor, group, dim: int) -> torch.Tensor:
    """Every rank's `tensor` (same shape on all), concatenated along `dim` in rank order."""
    tensor = tensor.contiguous()  # empty_like keeps strides: a permuted input would get permuted buffers
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts, dim=dim)


def all_to_all(tensor: torch.Tensor, group) -> torch.Tensor:
    """Chunk i of dim 0 goes to rank i; chunk i of the result came from rank i."""
    tensor = tensor.contiguous()
    out = torch.empty_like(tensor)
    dist.all_to_all_single(out, tensor, group=group)
    return out


def broadcast_tensors(tensors: Sequence[torch.Tensor] | None, device: torch.device, src: int = 0) -> list[torch.Tensor]:
    """Rank `src`'s tensors on every rank (the others pass None): shapes and dtypes first, then data."""
    meta = [[(tuple(t.shape), t.dtype) for t in tensors] if tensors is not None else None]
    dist.broadcast_object_list(meta, src=src)
    if tensors is None:
        tensors = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in meta[0]]
    out = []
    for t in tensors:
        t = t.to(device).contiguous()
        dist.broadcast(t, src=src)
        out.append(t)
    return out


# what a tensor sent point to point may be: its header names the dtype by index here
_SENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.uint8)
_MAX_DIMS = 8


def send_tensor(tensor: torch.Tensor, dst: int) -> None:
    """`tensor` to rank `dst` (which calls `recv_tensor`): a fixed-size header (dtype, shape), then the data."""
    header = torch.zeros(2 + _MAX_DIMS, dtype=torch.int64)
    header[0], header[1] = _SENT_DTYPES.index(tensor.dtype), tensor.ndim
    header[2 : 2 + tensor.ndim] = torch.tensor(tensor.shape)
    dist.send(header.to(tensor.device), dst)
    dist.send(tensor.contiguous(), dst)


def recv_tensor(src: int, device: torch.device) -> torch.Tensor:
    """The tensor rank `src` sends with `send_tensor`, on `device`."""
    header = torch.zeros(2 + _MAX_DIMS, dtype=torch.int64, device=device)
    dist.recv(header, src)
    header = header.tolist()
    out = torch.empty(header[2 : 2 + header[1]], dtype=_SENT_DTYPES[header[0]], device=device)
    dist.recv(out, src)
    return out


@contextlib.contextmanager
def host_lock(path: Path, world: World | bool | None) -> Iterator[None]:
    """One rank at a time on this host (building a shared artifact); a no-op for a single process."""
    if not world or (isinstance(world, World) and world.size == 1):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
