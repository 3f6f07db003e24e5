"""ONNX Runtime target: save ORT's fully optimised graph once so later sessions skip the optimiser."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto

from ltx_ascend.atomic import atomic_path
from ltx_ascend.errors import UserError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}

_EXTERNAL_FILE_KEY = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN_SIZE_KEY = "session.optimized_model_external_initializers_min_size_in_bytes"


def uses_external_data(model: Path) -> bool:
    """Whether any initializer of `model` (graph or subgraph) lives in an external data file."""
    proto = onnx.load(str(model), load_external_data=False)
    stack = [proto.graph]
    while stack:
        graph = stack.pop()
        if any(t.data_location == TensorProto.EXTERNAL for t in graph.initializer):
            return True
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return False


def _providers(provider: str) -> list[str]:
    key = provider.lower()
    if key not in PROVIDERS:
        raise UserError(f"unknown ONNX Runtime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[key][0]
    if wanted not in ort.get_available_providers():
        raise UserError(
            f"{wanted} is not available in this onnxruntime build; install onnxruntime-gpu or use --provider cpu"
        )
    return PROVIDERS[key]


def optimize_for_ort(model: Path, out: Path, provider: str = "cpu", *, threads: int | None = None) -> Path:
    """Write ORT's ORT_ENABLE_ALL-optimised version of `model` to `out` (atomically) and return `out`.

    The result is provider-specific: ENABLE_ALL fuses into provider kernels and layouts (e.g. NCHWc on CPU,
    com.microsoft contrib ops), so load it only with the same provider and a compatible onnxruntime build.
    When the input uses external data (models over 2 GB), the optimised initializers go to `out.name + ".data"`
    beside `out`, since one protobuf cannot hold them.
    """
    model, out = Path(model), Path(out)
    if not model.is_file():
        raise UserError(f"{model}: no such ONNX file; export the model first")
    providers = _providers(provider)
    external = uses_external_data(model)
    data_name = out.name + ".data"
    with atomic_path(out) as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp)
        options.log_severity_level = 3  # the "hardware specific optimisations" warning is the point here
        if threads is not None:
            if threads < 1:
                raise UserError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = threads
        if external:
            # Relative to the optimised model's folder: written into the temp folder, moved beside `out` below.
            options.add_session_config_entry(_EXTERNAL_FILE_KEY, data_name)
            options.add_session_config_entry(_EXTERNAL_MIN_SIZE_KEY, "1024")
        try:
            ort.InferenceSession(str(model), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UserError(f"ONNX Runtime could not load {model}: {exc}".splitlines()[0]) from None
        tmp_data = tmp.with_name(data_name)
        if tmp_data.exists():
            os.replace(tmp_data, out.with_name(data_name))
    return out
