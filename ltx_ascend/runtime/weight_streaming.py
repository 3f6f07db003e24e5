"""Layer streaming: the DiT's block weights live in host memory and reach the device N blocks ahead.

`StreamedBlockWeights` is a `BlockWeights` (the DiT runner's seam). When the runner asks for block
i, blocks i+1 .. i+N (wrapping round into the next call) are already being read from their
memory-mapped file on a worker thread and copied to the device on a side stream, so copies overlap
compute; the compute stream waits for block i's copy on the device, never on the host. Block i is
dropped when the runner releases it, so at most N + 1 blocks are materialised at any time.

On the CPU the device is host memory: nothing is copied. Tensors already in the compute dtype stay
views of the file's memory map (the worker faults their pages in ahead of use); a dtype conversion
or a LoRA fusion makes fresh buffers. Either way a released block's memory goes back to the OS.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import safetensors
import torch

from ltx_ascend.checkpoints.blocks import read_block_weights
from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime.block_weights import BlockWeights

log = logging.getLogger(__name__)

PAGE = 4096


class BlockSource(Protocol):
    """Host-side block weights, read one block at a time."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> dict[str, torch.Tensor]: ...


class BlockFileSource:
    """`block_XX.safetensors` as the block exporter wrote them (in the graph's dtype), memory-mapped
    one file at a time: the tensors are views of the map, nothing is read until touched."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = [Path(f) for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> dict[str, torch.Tensor]:
        with safetensors.safe_open(str(self.files[index]), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


class CheckpointBlockSource:
    """Blocks straight out of the checkpoint, LoRAs fused per block by ltx-core's `apply_loras`
    exactly as the block exporter fuses them (`checkpoints.blocks.read_block_weights`)."""

    def __init__(self, ckset: CheckpointSet, num_layers: int, dtype: torch.dtype) -> None:
        self.ckset, self.num_layers, self.dtype = ckset, num_layers, dtype

    def __len__(self) -> int:
        return self.num_layers

    def read(self, index: int) -> dict[str, torch.Tensor]:
        return read_block_weights(self.ckset, index, self.dtype)


@dataclass
class _Loaded:
    tensors: dict[str, torch.Tensor]  # on the device
    ready: torch.Event | None  # recorded on the side stream after the copies; None on cpu


def _touch(tensor: torch.Tensor) -> None:
    """Fault a memory-mapped tensor's pages in (one byte per page) so compute does not wait on the disk."""
    if tensor.numel():
        int(tensor.reshape(-1).view(torch.uint8)[::PAGE].max())


class StreamedBlockWeights(BlockWeights):
    """Block i on the device when the runner asks for it, blocks i+1 .. i+prefetch on their way.

    `live_bytes` / `peak_live_bytes` count the bytes of block tensors this object handed out or
    holds that are still alive (tracked per tensor, so a caller keeping references shows up)."""

    def __init__(self, source: BlockSource, device: torch.device | str, prefetch: int) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch count must be >= 0, got {prefetch}")
        self.source = source
        self.device = torch.device(device)
        self.prefetch = min(prefetch, max(len(source) - 1, 0))
        self._stream = dev.new_stream(self.device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltx-block-prefetch")
        self._window: dict[int, Future[_Loaded]] = {}
        self._lock = threading.Lock()
        self.live_bytes = 0
        self.peak_live_bytes = 0
        self.loads = 0
        self._shutdown = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return len(self.source)

    # -- accounting ------------------------------------------------------------------------------

    def _track(self, tensors: Mapping[str, torch.Tensor]) -> None:
        nbytes = [t.numel() * t.element_size() for t in tensors.values()]
        with self._lock:
            self.live_bytes += sum(nbytes)
            self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
            self.loads += 1
        for tensor, n in zip(tensors.values(), nbytes, strict=True):
            weakref.finalize(tensor, self._untrack, n)

    def _untrack(self, nbytes: int) -> None:
        with self._lock:
            self.live_bytes -= nbytes

    # -- the worker ------------------------------------------------------------------------------

    def _load(self, index: int) -> _Loaded:
        host = self.source.read(index)
        if self.device.type == "cpu":
            for tensor in host.values():
                _touch(tensor)
            self._track(host)
            return _Loaded(host, None)
        pinned = {k: dev.pin(t, self.device) for k, t in host.items()}
        del host
        with dev.on_stream(self._stream):
            tensors = {k: t.to(self.device, non_blocking=True) for k, t in pinned.items()}
        # The host allocator keeps each pinned buffer until its asynchronous copy has completed.
        ready = dev.record_event(self._stream)
        self._track(tensors)
        return _Loaded(tensors, ready)

    # -- the seam --------------------------------------------------------------------------------

    def _schedule(self, index: int) -> None:
        """Keep exactly blocks index .. index+prefetch (mod the block count) loaded or loading."""
        n = len(self.source)
        wanted = [(index + k) % n for k in range(self.prefetch + 1)]
        for other in [i for i in self._window if i not in wanted]:  # an out-of-order request
            self._drop(other)
        for i in wanted:
            if i not in self._window:
                self._window[i] = self._pool.submit(self._load, i)

    def _drop(self, index: int) -> None:
        future = self._window.pop(index, None)
        if future is None or future.cancel() or not future.done() or future.exception() is not None:
            return  # cancelled, or still loading: its result is dropped when the worker finishes
        compute = dev.current_stream(self.device)
        for tensor in future.result().tensors.values():
            dev.record_stream(tensor, compute)  # queued compute may still read it

    def __getitem__(self, index: int) -> Mapping[str, torch.Tensor]:
        if not 0 <= index < len(self.source):
            raise IndexError(index)
        self._schedule(index)
        loaded = self._window[index].result()
        dev.wait_event(self.device, loaded.ready)
        return loaded.tensors

    def release(self, index: int) -> None:
        self._drop(index)

    def close(self) -> None:
        for index in list(self._window):
            self._drop(index)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._shutdown.detach()
