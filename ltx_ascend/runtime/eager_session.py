"""Eager backend: the graph-form torch module (ltx-core under our wrappers) behind the Session contract.

This is the module the ONNX was traced from (`ExportItem.module`), so it takes the same named inputs
and returns the same named outputs as the om and ort sessions. It is the fallback when no compiled
artifact matches, and the reference a compiled session is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from ltx_ascend import dtypes
from ltx_ascend.runtime.session import Session, TensorSpec, check_feeds


class TracedGraph(Protocol):
    """What `from_item` reads of a graph to export (export's `ExportItem`; the runtime never imports export)."""

    module: torch.nn.Module
    input_names: Sequence[str]
    output_names: Sequence[str]
    sample: Mapping[str, torch.Tensor]

    @property
    def name(self) -> str: ...


class EagerSession(Session):
    """`module.forward(*inputs in input_names order) -> tuple in output_names order`, on `device`."""

    backend = "eager"

    def __init__(
        self,
        module: torch.nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        inputs: Sequence[TensorSpec] | None = None,
        outputs: Sequence[TensorSpec] | None = None,
        name: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = module.to(device=self.device, dtype=dtype).eval()
        self.name = name or type(module).__name__
        self.inputs = list(inputs) if inputs is not None else [TensorSpec(n) for n in input_names]
        self.outputs = list(outputs) if outputs is not None else [TensorSpec(n) for n in output_names]
        if [s.name for s in self.inputs] != list(input_names) or [s.name for s in self.outputs] != list(output_names):
            raise ValueError("inputs/outputs specs must list input_names/output_names in the same order")

    @classmethod
    def from_item(
        cls, item: TracedGraph, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> EagerSession:
        """An eager session over an export item's module; inputs checked against the item's sample shapes."""
        floats = [t.dtype for t in item.sample.values() if t.is_floating_point()]
        dtype = dtype or (floats[0] if floats else torch.float32)
        inputs = [
            TensorSpec(n, tuple(t.shape), dtypes.name(t.dtype))
            for n, t in ((n, item.sample[n]) for n in item.input_names)
        ]
        return cls(item.module, item.input_names, item.output_names, device, dtype, inputs=inputs, name=item.name)

    def _prepare(self, spec: TensorSpec, tensor: torch.Tensor) -> torch.Tensor:
        # Feeds follow the graph boundary: the spec's dtype where one is given, else as fed (a graph
        # may keep some float inputs in float32 whatever its dtype, e.g. the DiT's timesteps).
        dtype = spec.torch_dtype if spec.dtype is not None else tensor.dtype
        return tensor.to(device=self.device, dtype=dtype)

    def run(self, feeds: Mapping[str, torch.Tensor], *, copy_outputs: bool = True) -> dict[str, torch.Tensor]:
        """Outputs are fresh tensors every call; `copy_outputs` is accepted for the common contract."""
        check_feeds(self.inputs, feeds, self.name)
        args = [self._prepare(s, feeds[s.name]) for s in self.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self.outputs):
            raise RuntimeError(f"{self.name}: module returned {len(result)} outputs, expected {len(self.outputs)}")
        return {s.name: t for s, t in zip(self.outputs, result, strict=True)}

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
