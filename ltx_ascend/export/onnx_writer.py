"""Trace a stage module to ONNX at a static shape, with the patches that make it NPU-safe.

We use the TorchScript exporter: the dynamo exporter's graphs fail ONNX Runtime's shape
inference on this model (FACTS.md), and the TorchScript one only lacks `aten::rms_norm` below
opset 23, which we give a symbolic: decomposed into Pow/ReduceMean/Add/Sqrt/Div (every op in
ATC's registry), or `npu::NPURmsNorm` with `npu_ops`. Attention is exported from
`scaled_dot_product_attention` as MatMul/Softmax/MatMul by torch's own symbolic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnx.numpy_helper
import torch
from torch.onnx import symbolic_helper

from ltx_ascend.export.patches import export_patches

OPSET = 18
# ONNX Runtime 1.31 reads IR version <= 11 reliably; torch writes 8 for opset 18: leave it.
EXTERNAL_DATA_THRESHOLD = 1 << 30  # graphs with more weight bytes keep them beside the .onnx


def _normalized_rank(normalized_shape) -> int:
    """How many trailing dims are normalised (the list may be traced from x.shape[-1])."""
    if symbolic_helper._is_packed_list(normalized_shape):
        return len(symbolic_helper._unpack_list(normalized_shape))
    return len(symbolic_helper._get_const(normalized_shape, "is", "normalized_shape"))


def _rms_norm_decomposed(g, x, normalized_shape, weight, eps):
    rank = _normalized_rank(normalized_shape)
    eps_value = symbolic_helper._maybe_get_const(eps, "f")
    if eps_value is None or symbolic_helper._is_none(eps):
        eps_value = 1e-6
    axes = g.op("Constant", value_t=torch.tensor(list(range(-rank, 0)), dtype=torch.int64))
    two = g.op("Constant", value_t=torch.tensor(2.0, dtype=torch.float32))
    x32 = g.op("Cast", x, to_i=1)  # accumulate in float32 whatever the graph dtype
    mean_sq = g.op("ReduceMean", g.op("Pow", x32, two), axes, keepdims_i=1)
    eps_t = g.op("Constant", value_t=torch.tensor(eps_value, dtype=torch.float32))
    normed = g.op("Div", x32, g.op("Sqrt", g.op("Add", mean_sq, eps_t)))
    out = g.op("CastLike", normed, x)
    if not symbolic_helper._is_none(weight):
        out = g.op("Mul", out, weight)
    return out


def _rms_norm_npu(g, x, normalized_shape, weight, eps):
    eps_value = symbolic_helper._maybe_get_const(eps, "f")
    if symbolic_helper._is_none(weight):  # NPURmsNorm needs a gamma: ones over the normalised dims
        rank = _normalized_rank(normalized_shape)
        shape = g.op("Slice", g.op("Shape", x), *(g.op("Constant", value_t=torch.tensor([v])) for v in (-rank, 2**62)))
        one = g.op("Constant", value_t=torch.tensor([1.0]))
        weight = g.op("CastLike", g.op("ConstantOfShape", shape, value_t=torch.tensor([1.0])), x)
        del one
    eps_value = 1e-6 if eps_value is None or symbolic_helper._is_none(eps) else eps_value
    out, _rstd = g.op("npu::NPURmsNorm", x, weight, epsilon_f=eps_value, outputs=2)
    return out


@contextlib.contextmanager
def export_symbolics(opset: int = OPSET, npu_ops: bool = False) -> Iterator[None]:
    """Register our symbolics for the duration of one export."""
    fn = _rms_norm_npu if npu_ops else _rms_norm_decomposed
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", fn, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::rms_norm", opset)


def export_onnx(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | Path,
    *,
    opset: int = OPSET,
    npu_ops: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Export `module(*args)` to `path`; weights go to one `<name>.data` file when external.

    `external_data=None` decides by size (above 1 GiB of weights). Files are written in a temp
    folder and moved in, data first, so a reader never finds an .onnx without its weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        weight_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        external_data = weight_bytes > EXTERNAL_DATA_THRESHOLD
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        traced = tmp_dir / "traced.onnx"
        with export_symbolics(opset, npu_ops), export_patches(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                module.eval(),
                tuple(args),
                str(traced),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
                external_data=external_data,
            )
        model = onnx.load(str(traced), load_external_data=True)
        if npu_ops:
            _declare_npu_domain(model)
        final = tmp_dir / path.name
        data_name = path.name + ".data"
        # Decide on what the graph really holds: a block graph whose weights are inputs has none.
        initializer_bytes = sum(
            len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
            for t in model.graph.initializer
        )
        if external_data and initializer_bytes > EXTERNAL_DATA_THRESHOLD:
            onnx.save_model(
                model,
                str(final),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            (tmp_dir / data_name).chmod(0o644)
            os.replace(tmp_dir / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(final))
        os.replace(final, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _declare_npu_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == "npu" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("npu", 1))
