"""ONNX Runtime session with IO binding: no feed/fetch copies through numpy.

Inputs are bound by pointer to the caller's (contiguous) torch tensors on every run, so on the CPU EP
ORT reads the caller's memory and on the CUDA EP it reads CUDA tensors in place. Outputs are torch
tensors allocated once per session at the manifest's static shapes and bound once; every run writes
into the same memory. `run(feeds, copy_outputs=False)` returns those buffers themselves (the next run
overwrites them); the default `copy_outputs=True` returns clones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnxruntime as ort
import torch
from onnx import TensorProto

from ltx_ascend.backends import OpenOptions
from ltx_ascend.compile.ort import PROVIDERS
from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as devices
from ltx_ascend.runtime.session import Session, TensorSpec, check_feeds
from ltx_ascend.store import MANIFEST, Manifest

CPU = torch.device("cpu")

# torch dtype -> ONNX element type, which IOBinding accepts in place of a numpy type (bfloat16 has none).
_ONNX_TYPES: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.float64: TensorProto.DOUBLE,
    torch.int32: TensorProto.INT32,
    torch.int64: TensorProto.INT64,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}

# ORT device names for the torch device types each provider reads.
_ORT_DEVICE = {"cpu": "cpu", "cuda": "cuda"}


def is_preoptimized(path: Path) -> bool:
    """Whether `path` sits in an `ltx-compile --target ort` folder (manifest kind "ort")."""
    if not (path.parent / MANIFEST).is_file():
        return False
    try:
        return Manifest.read(path.parent).kind == "ort"
    except UserError:
        return False


def _check_dtypes(path: Path, graph_args: Sequence, specs: Sequence[TensorSpec]) -> None:
    """The manifest's dtype of every input/output is the graph's (ORT names them `tensor(float)`...)."""
    declared = {a.name: a.type for a in graph_args}
    for spec in specs:
        if spec.dtype is None:
            continue
        wanted = f"tensor({_ORT_TYPE_NAMES.get(spec.dtype, spec.dtype)})"
        if declared.get(spec.name) != wanted:
            raise UserError(
                f"{path}: {spec.name} is {declared.get(spec.name)} in the graph but {spec.dtype} in its manifest "
                "(edited by hand?): re-export the artifact with `ltx-export --force`"
            )


_ORT_TYPE_NAMES = {"float32": "float", "float64": "double"}


def session_providers(provider: str, device: torch.device) -> list:
    """ORT's provider list for `provider`: the CUDA provider on the tensors' GPU (`device_id`), not
    always on GPU 0, so each rank of a multi-GPU run computes on its own card."""
    providers: list = list(PROVIDERS[provider])
    if provider == "cuda":
        providers[0] = (providers[0], {"device_id": device.index or 0})
    return providers


def _session_options(preoptimized: bool, threads: int | None) -> ort.SessionOptions:
    """Optimisation level, threads and memory settings of every session."""
    options = ort.SessionOptions()
    # An ort-* graph was saved after ORT_ENABLE_ALL: optimising it again costs load time for nothing.
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if preoptimized else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.enable_mem_pattern = True
    # No CPU arena: it grows in powers of two and keeps every chunk, which doubled the working set
    # of one 22B block (measured: +6.9 GB with the arena, +3.4 GB without, same speed).
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return options


class OrtSession(Session):
    """One ONNX graph on ONNX Runtime (`provider` "cpu" or "cuda"), inputs/outputs as torch tensors."""

    backend = "ort"

    def __init__(
        self,
        path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        provider: str = "cpu",
        device: torch.device = CPU,
        threads: int | None = None,
    ) -> None:
        path = Path(path)
        self.path = path
        self.name = path.stem
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.device = torch.device(device)
        provider = provider.lower()
        self._check_request(provider, threads)
        self.providers = providers = session_providers(provider, self.device)
        self.preoptimized = is_preoptimized(path)
        self._session = self._open(_session_options(self.preoptimized, threads), providers)
        self._ort_device = _ORT_DEVICE[self.device.type]
        self._device_id = self.device.index or 0
        self._binding = self._session.io_binding()
        self._buffers: dict[str, torch.Tensor] = {}
        self._bind_outputs()

    def _check_request(self, provider: str, threads: int | None) -> None:
        """Refuse, in one line each, what ONNX Runtime would fail on later or obscurely: an unknown or
        missing provider, tensors on another device, bfloat16 on CPU, no file, no threads."""
        path = self.path
        if provider not in PROVIDERS:
            raise UserError(f"unknown ONNX Runtime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
        if self.device.type != provider:
            raise UserError(f"{self.name}: the {provider} provider needs tensors on {provider}, not {self.device}")
        if provider == "cpu":
            half = [s.name for s in (*self.inputs, *self.outputs) if s.dtype == "bfloat16"]
            if half:
                raise UserError(
                    f"{self.name}: bfloat16 graph ({half[0]}), but ONNX Runtime's CPU provider lacks most bfloat16 "
                    "kernels: export with --dtype float32 for ORT on CPU"
                )
        wanted = PROVIDERS[provider][0]
        if wanted not in ort.get_available_providers():
            raise UserError(f"{wanted} is not in this onnxruntime build; install onnxruntime-gpu or use cpu")
        if not path.is_file():
            raise UserError(f"{path}: no such ONNX file; export (and compile) the model first")
        if threads is not None and threads < 1:
            raise UserError(f"threads must be at least 1, got {threads}")

    def _open(self, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
        """Load the graph, and check its inputs, outputs and dtypes against the manifest's specs."""
        path = self.path
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UserError(
                f"ONNX Runtime could not load {path} ({str(exc).splitlines()[0][:200]}): the graph file is damaged "
                "or not ONNX; re-export it with `ltx-export --force` (and recompile with `ltx-compile --force`)"
            ) from None
        graph_inputs = [i.name for i in session.get_inputs()]
        graph_outputs = [o.name for o in session.get_outputs()]
        if sorted(graph_inputs) != sorted(self.input_names) or sorted(graph_outputs) != sorted(self.output_names):
            raise UserError(
                f"{path}: graph inputs/outputs {graph_inputs}/{graph_outputs} differ from the manifest's "
                f"{self.input_names}/{self.output_names}: re-export the artifact"
            )
        _check_dtypes(path, [*session.get_inputs(), *session.get_outputs()], [*self.inputs, *self.outputs])
        return session

    def _bind_outputs(self) -> None:
        """Bind one preallocated buffer per output, so that each run writes into the same device memory."""
        for spec in self.outputs:
            if spec.shape is None:
                raise UserError(f"{self.name}: output {spec.name} has no static shape in the manifest")
            buffer = torch.empty(spec.shape, dtype=spec.torch_dtype, device=self.device)
            self._buffers[spec.name] = buffer
            self._binding.bind_output(
                spec.name,
                self._ort_device,
                self._device_id,
                _ONNX_TYPES[buffer.dtype],
                list(buffer.shape),
                buffer.data_ptr(),
            )

    def run(self, feeds: Mapping[str, torch.Tensor], *, copy_outputs: bool = True) -> dict[str, torch.Tensor]:
        """Run the graph. With `copy_outputs=False` the returned tensors are this session's output
        buffers, overwritten by the next run: clone any you keep across calls."""
        if self._binding is None:
            raise RuntimeError(f"{self.name}: session is closed")
        check_feeds(self.inputs, feeds, self.name)
        bound = []  # keep converted tensors alive until the run is over
        for spec in self.inputs:
            tensor = feeds[spec.name]
            if tensor.device != self.device:
                tensor = tensor.to(self.device)  # a copy: feed tensors on the session's device to avoid it
            tensor = tensor.contiguous()
            bound.append(tensor)
            self._binding.bind_input(
                spec.name,
                self._ort_device,
                self._device_id,
                _ONNX_TYPES[tensor.dtype],
                list(tensor.shape),
                tensor.data_ptr(),
            )
        # ORT runs on its own stream: let torch's queued work that produced the inputs finish first.
        devices.synchronize(self.device)
        self._session.run_with_iobinding(self._binding)
        del bound
        if copy_outputs:
            return {n: b.clone() for n, b in self._buffers.items()}
        return dict(self._buffers)

    def output_buffer(self, name: str) -> torch.Tensor:
        """The preallocated tensor output `name` is written into (its data_ptr never changes)."""
        return self._buffers[name]

    def close(self) -> None:
        if getattr(self, "_binding", None) is not None:
            self._binding.clear_binding_inputs()
            self._binding.clear_binding_outputs()
        self._binding = None
        self._session = None
        self._buffers = {}


def open_ort(
    path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], options: OpenOptions
) -> OrtSession:
    """The ort and onnx records' session factory (ltx_ascend.backends): the options' provider and device."""
    device = CPU if options.device is None else options.device
    return OrtSession(path, inputs, outputs, provider=options.ep, device=device, threads=options.threads)
