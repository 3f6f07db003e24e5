"""The device layer: pick npu > cuda > cpu, decide dtypes, and own every backend-specific call.

This is the only module that names `torch.cuda` or `torch.npu`. Everything else asks it for a
`DevicePolicy` and calls `synchronize`, `empty_cache`, `new_stream`, `new_event` and the memory
counters below, which go through the device-generic `torch.accelerator` / `torch.Stream` /
`torch.Event` APIs. torch_npu is optional: it needs CANN's shared libraries at import time, so it
is imported lazily, once, and any failure simply means "no NPU" (the reason is kept for `describe`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import torch

from ltx_ascend import dtypes
from ltx_ascend.errors import UserError

DEVICE_KINDS = ("npu", "cuda", "cpu")  # preference order for --device auto

_SPEC_RE = re.compile(r"^(cpu|cuda|npu)(?::(\d+))?$")


DTYPE_CHOICES = ("float32", "bfloat16", "float16")  # what --dtype offers

_NPU_FIX = "install the [npu] extra and source CANN's set_env.sh, or pass --device cpu"


# --------------------------------------------------------------------------- probing


class _Probe(NamedTuple):
    available: bool
    count: int
    reason: str  # why the backend is unusable; empty when available


def _import_torch_npu() -> ModuleType:
    """Import torch_npu; it renames torch's PrivateUse1 backend to "npu" and adds `torch.npu`."""
    return importlib.import_module("torch_npu")


@functools.lru_cache(maxsize=1)
def _probe_npu() -> _Probe:
    """Try torch_npu once. Tests reset this with `_probe_npu.cache_clear()`."""
    try:
        _import_torch_npu()
    except ModuleNotFoundError as exc:
        if exc.name == "torch_npu":
            return _Probe(False, 0, "torch_npu is not installed")
        return _Probe(False, 0, f"torch_npu is not importable ({_one_line(exc)})")
    except Exception as exc:  # missing CANN libraries surface as ImportError, OSError or RuntimeError
        return _Probe(False, 0, f"torch_npu is not importable ({_one_line(exc)})")
    npu = getattr(torch, "npu", None)
    if npu is None:
        return _Probe(False, 0, "torch_npu imported but did not register torch.npu")
    try:
        count = int(npu.device_count()) if npu.is_available() else 0
    except Exception as exc:  # a broken driver raises here rather than at import
        return _Probe(False, 0, f"torch_npu cannot query devices ({_one_line(exc)})")
    if count == 0:
        return _Probe(False, 0, "torch_npu sees no NPU (check npu-smi info and ASCEND_RT_VISIBLE_DEVICES)")
    return _Probe(True, count, "")


def _cuda_probe() -> _Probe:
    """CUDA availability with a reason, same shape as the NPU probe (not cached: it is cheap)."""
    if torch.version.cuda is None:
        return _Probe(False, 0, f"this torch build ({torch.__version__}) has no CUDA")
    if not torch.cuda.is_available():
        return _Probe(False, 0, f"no CUDA device is visible (torch {torch.__version__})")
    return _Probe(True, torch.cuda.device_count(), "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def available_backends() -> list[str]:
    """Usable device types on this host, most preferred first; "cpu" is always last."""
    found = [name for name, probe in (("npu", _probe_npu()), ("cuda", _cuda_probe())) if probe.available]
    return [*found, "cpu"]


def resolve_device(spec: str | None = None) -> torch.device:
    """Turn a --device value (None/"auto", "cpu", "cuda[:i]", "npu[:i]") into a usable torch.device.

    Raises UserError, one line naming the problem and the fix, for anything unusable.
    """
    text = "auto" if spec is None else spec.strip().lower()
    if text == "auto":
        return torch.device(available_backends()[0])
    match = _SPEC_RE.match(text)
    if match is None:
        raise UserError(f"--device {spec}: not a device; use auto, cpu, cuda, cuda:N, npu or npu:N")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    probe = _probe_npu() if kind == "npu" else _cuda_probe()
    if not probe.available:
        fix = _NPU_FIX if kind == "npu" else "install a CUDA build of torch and check nvidia-smi, or pass --device cpu"
        raise UserError(f"--device {spec}: {probe.reason}; {fix}")
    if index is None:
        return torch.device(kind)
    if int(index) >= probe.count:
        raise UserError(
            f"--device {spec}: only {probe.count} {kind} device(s) visible; use {kind}:0..{probe.count - 1}"
        )
    return torch.device(kind, int(index))


# --------------------------------------------------------------------------- dtype policy


@dataclass(frozen=True)
class DevicePolicy:
    """Where and in which dtypes the pipeline computes; build it with `policy_for`."""

    device: torch.device
    dtype: torch.dtype  # compute dtype of the transformer, VAE and text encoder
    high_precision_dtype: torch.dtype  # e.g. the res2s sampler's accumulators; NPU has no float64
    complex_device: torch.device  # STFT / mel / complex ops; NPU lacks complex kernels, so cpu there
    vocoder_dtype: (
        torch.dtype
    )  # float32 on NPU (its bf16 vocoder is unusable); the compute dtype elsewhere, as ltx-core

    def vocoder_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the vocoder call: deliberately no autocast.

        torch.autocast on NPU accepts only float16/bfloat16, so float32 cannot be had that way; the
        vocoder is instead cast to `vocoder_dtype` and fed float32 inputs. Callers must not wrap it in
        an outer bf16 autocast region.
        """
        return contextlib.nullcontext()


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return dtypes.parse(dtype, dtypes.COMPUTE_DTYPES, offered=DTYPE_CHOICES)


def policy_for(device: torch.device | str, dtype: str | torch.dtype | None = None) -> DevicePolicy:
    """Dtype policy: bfloat16 on npu/cuda, float32 on cpu unless `dtype` overrides; no float64 on npu."""
    device = torch.device(device) if isinstance(device, str) else device
    on_npu = device.type == "npu"
    default = torch.float32 if device.type == "cpu" else torch.bfloat16
    compute = default if dtype is None else _parse_dtype(dtype)
    if on_npu and compute == torch.float64:
        raise UserError(f"--dtype {dtype}: Ascend NPUs have no float64; use bfloat16 or float32")
    return DevicePolicy(
        device=device,
        dtype=compute,
        high_precision_dtype=torch.float32 if on_npu else torch.float64,
        complex_device=torch.device("cpu") if on_npu else device,
        vocoder_dtype=torch.float32 if on_npu else compute,
    )


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """Add --device and --dtype, so every CLI spells them the same way."""
    parser.add_argument(
        "--device", default="auto", help="auto (npu > cuda > cpu), cpu, cuda, cuda:N, npu or npu:N (default: auto)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="compute dtype (default: bfloat16 on npu/cuda, float32 on cpu)",
    )


def policy_from_args(args: argparse.Namespace) -> DevicePolicy:
    """The policy for parsed --device/--dtype (missing attributes mean the defaults)."""
    return policy_for(resolve_device(getattr(args, "device", None)), getattr(args, "dtype", None))


def describe(policy: DevicePolicy) -> str:
    """One log line: device, dtypes, and why there is no NPU when there is none."""

    def name(dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")

    line = (
        f"device {policy.device}, dtype {name(policy.dtype)}, high precision {name(policy.high_precision_dtype)}, "
        f"complex ops on {policy.complex_device}, vocoder {name(policy.vocoder_dtype)}"
    )
    if policy.device.type != "npu":
        probe = _probe_npu()
        if not probe.available:
            line += f"; no npu: {probe.reason}"
    return line


# --------------------------------------------------------------------------- device ops


def _on_accelerator(device: torch.device) -> bool:
    """Whether `torch.accelerator` drives this device (it serves one accelerator type per process)."""
    current = torch.accelerator.current_accelerator()
    return current is not None and current.type == device.type


def _call(device: torch.device, name: str, *args: Any) -> Any:
    """Run `torch.accelerator.<name>`, or the backend module's function of that name as a fallback.

    The fallback (`torch.cuda.<name>` / `torch.npu.<name>` looked up by device type) is used when the
    device is not the current accelerator or torch.accelerator lacks the function; this is the only
    place in the package that reaches a backend module.
    """
    fn = getattr(torch.accelerator, name, None) if _on_accelerator(device) else None
    if fn is None:
        backend = getattr(torch, device.type, None)
        fn = getattr(backend, name, None)
    if fn is None:
        raise RuntimeError(f"torch has no {name} for device type {device.type!r}")
    return fn(*args)


def set_device(device: torch.device) -> None:
    """Make `device` current for this thread (no-op on cpu). On an NPU this is what has torch_npu
    initialise ACL (its aclInit and context), so pyACL used after it shares that initialisation."""
    if device.type == "cpu":
        return
    if _on_accelerator(device) and hasattr(torch.accelerator, "set_device_index"):
        torch.accelerator.set_device_index(device.index or 0)
    else:
        getattr(torch, device.type).set_device(device)


def accelerator_index(device: torch.device) -> int:
    """The device id a compiled session opens on (pyACL's `set_device`, ORT's CUDA `device_id`): the
    torch device's own index; for a CPU-side run under torchrun (an om session with no torch_npu) the
    rank's card, LOCAL_RANK, counted inside ASCEND_RT_VISIBLE_DEVICES as ACL does (a rank that sees
    exactly one card opens device 0)."""
    import os

    if device.type != "cpu":
        return device.index or 0
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    visible = [v for v in os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if len(visible) == 1:
        return 0
    if visible and local >= len(visible):
        raise UserError(
            f"LOCAL_RANK {local} but ASCEND_RT_VISIBLE_DEVICES={','.join(visible)} shows {len(visible)} card(s): "
            "list one card per local rank"
        )
    return local


def torch_npu_loaded() -> bool:
    """Whether torch_npu is imported in this process: it then owns ACL (aclInit at its first use,
    aclFinalize at exit), so nobody else may call acl.finalize()."""
    return sys.modules.get("torch_npu") is not None


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on `device` (no-op on cpu)."""
    if device.type != "cpu":
        _call(device, "synchronize", device)


def empty_cache(device: torch.device) -> None:
    """Return cached allocator blocks to the driver (no-op on cpu)."""
    if device.type != "cpu":
        _call(device, "empty_cache")


def max_memory_allocated(device: torch.device) -> int | None:
    """Peak bytes allocated by tensors on `device` since the last reset; None on cpu."""
    if device.type == "cpu":
        return None
    return int(_call(device, "max_memory_allocated", device))


def reset_peak_memory_stats(device: torch.device) -> None:
    """Start a new peak for `max_memory_allocated` (no-op on cpu)."""
    if device.type != "cpu":
        _call(device, "reset_peak_memory_stats", device)


def new_stream(device: torch.device) -> torch.Stream | None:
    """A fresh stream on `device`; None on cpu, where work is synchronous anyway."""
    return None if device.type == "cpu" else torch.Stream(device=device)


def new_event(device: torch.device, enable_timing: bool = False) -> torch.Event | None:
    """A fresh event on `device` (timing events for profiling); None on cpu."""
    return None if device.type == "cpu" else torch.Event(device=device, enable_timing=enable_timing)


def current_stream(device: torch.device) -> torch.Stream | None:
    """The stream compute is queued on in this thread; None on cpu."""
    return None if device.type == "cpu" else torch.accelerator.current_stream(device)


def on_stream(stream: torch.Stream | None) -> contextlib.AbstractContextManager[Any]:
    """Queue the work of the `with` body on `stream` (a side stream); nothing on cpu (None)."""
    return contextlib.nullcontext() if stream is None else stream


def record_event(stream: torch.Stream | None) -> torch.Event | None:
    """An event marking all work queued on `stream` so far; None on cpu."""
    if stream is None:
        return None
    event = torch.Event(device=stream.device)
    event.record(stream)
    return event


def wait_event(device: torch.device, event: torch.Event | None) -> None:
    """Make this thread's current stream on `device` wait (on the device, not the host) for `event`."""
    if event is not None:
        current_stream(device).wait_event(event)


def record_stream(tensor: torch.Tensor, stream: torch.Stream | None) -> None:
    """Tell the caching allocator that `stream` uses `tensor` (allocated on another stream), so its
    memory is not reused before the work queued on `stream` has finished."""
    if stream is not None:
        tensor.record_stream(stream)


def pin(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked host copy for an asynchronous host-to-`device` copy; the tensor itself on cpu."""
    return tensor if device.type == "cpu" else tensor.pin_memory()


def require_npu_backend() -> None:
    """torch_npu registers HCCL with torch.distributed when imported; fail with the fix if it cannot be."""
    probe = _probe_npu()
    if not probe.available:
        raise UserError(f"--parallel on npu: {probe.reason}; {_NPU_FIX}")


# --------------------------------------------------------------------------- attention

AttentionCore = Callable[..., torch.Tensor]  # ltx-core's AttentionCallable: (q, k, v, heads, mask=None)


def attention_core(device: torch.device) -> AttentionCore:
    """Mask-free attention on ltx-core's [B, T, heads*dim] tensors with the device's fused kernel: the
    cores between the split DiT's segments (and Ulysses' all-to-alls) run here, outside any graph.
    On an NPU: torch_npu's `npu_fusion_attention` (BSH layout, FlashAttention-style, no score matrix);
    elsewhere torch's SDPA, which is ltx-core's own PyTorch core (flash / memory-efficient kernels
    where the build has them)."""
    if device.type == "npu":
        npu = _import_torch_npu()

        def fused(q, k, v, heads, mask=None):
            if mask is not None:
                raise ValueError("the device attention core takes no mask (the split block graph has none)")
            scale = (q.shape[-1] // heads) ** -0.5
            return npu.npu_fusion_attention(q, k, v, heads, input_layout="BSH", scale=scale)[0]

        return fused

    def sdpa(q, k, v, heads, mask=None):
        b, _, inner = q.shape
        q4, k4, v4 = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, -1, inner)

    return sdpa
