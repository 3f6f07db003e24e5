"""One Session contract for every backend: named tensors in, named tensors out.

`run(feeds) -> outputs` takes and returns `torch.Tensor`s keyed by graph tensor name, whatever runs
the graph (a CANN `.om` engine, ONNX Runtime, or eager ltx-core under our graph wrappers), so the
pipelines never know which backend they drive. The om and ort sessions keep their outputs in buffers
allocated once per session; `run(..., copy_outputs=False)` hands those buffers back directly (the
denoising hot loop), and the default `copy_outputs=True` returns clones a caller may keep.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ltx_ascend import dtypes
from ltx_ascend.errors import UserError


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape`/`dtype` of None mean "not known" (eager without a manifest)."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> TensorSpec:
        return cls(str(entry["name"]), tuple(int(d) for d in entry["shape"]), str(entry["dtype"]))

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            raise ValueError(f"{self.name}: dtype unknown")
        if self.dtype not in dtypes.TORCH:
            raise UserError(f"graph tensor {self.name} has dtype {self.dtype}, which the runtime does not handle")
        return dtypes.TORCH[self.dtype]

    @property
    def nbytes(self) -> int:
        if self.shape is None:
            raise ValueError(f"{self.name}: shape unknown")
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty((), dtype=self.torch_dtype).element_size()

    def describe(self) -> str:
        shape = "?" if self.shape is None else "x".join(map(str, self.shape)) or "scalar"
        return f"{self.name} [{shape} {self.dtype or '?'}]"


def specs_from_manifest(graph_io: Mapping[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of one `manifest.io["graphs"][name]` entry."""
    try:
        return (
            [TensorSpec.from_dict(e) for e in graph_io["inputs"]],
            [TensorSpec.from_dict(e) for e in graph_io["outputs"]],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"manifest graph entry lacks a valid inputs/outputs spec ({exc!r}): re-export it") from None


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def check_feeds(specs: Iterable[TensorSpec], feeds: Mapping[str, torch.Tensor], graph: str = "graph") -> None:
    """Raise a one-line UserError for a missing or unexpected name, a wrong shape or a wrong dtype."""
    specs = list(specs)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise UserError(f"{graph}: missing input(s) {', '.join(missing)}; it takes {', '.join(names)}")
    extra = [n for n in feeds if n not in names]
    if extra:
        raise UserError(f"{graph}: unexpected input(s) {', '.join(extra)}; it takes {', '.join(names)}")
    for spec in specs:
        value = feeds[spec.name]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{graph}: input {spec.name} is a {type(value).__name__}, expected a torch.Tensor")
        if spec.shape is not None and tuple(value.shape) != spec.shape:
            want = "x".join(map(str, spec.shape)) or "scalar"
            raise UserError(f"{graph}: input {spec.name} has shape {_shape(value)}, expected {want}")
        if spec.dtype is not None and dtypes.name(value.dtype) != spec.dtype:
            raise UserError(f"{graph}: input {spec.name} has dtype {dtypes.name(value.dtype)}, expected {spec.dtype}")


class Session(abc.ABC):
    """A loaded graph. Subclasses set `backend`, `inputs`, `outputs` and implement `run` and `close`."""

    backend: str = ""
    name: str = "graph"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, torch.Tensor], *, copy_outputs: bool = True) -> dict[str, torch.Tensor]:
        """Outputs by name. With `copy_outputs=False` the om/ort sessions return their reused output
        buffers: the next `run` overwrites them, so clone what must outlive it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources; idempotent."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, backend={self.backend!r})"
