"""Trace a stage module to ONNX at a static shape, with the patches that make it NPU-safe.

We use the TorchScript exporter: the dynamo exporter's graphs fail ONNX Runtime's shape
inference on this model (docs/reference-figures.md), and the TorchScript one only lacks `aten::rms_norm` below
opset 23, which we give a symbolic: decomposed into Pow/ReduceMean/Add/Sqrt/Div (every op in
ATC's registry), or `npu::NPURmsNorm` with `npu_ops`. Attention is exported from
`scaled_dot_product_attention` as MatMul/Softmax/MatMul by torch's own symbolic.

`ort_fused` writes a graph for ONNX Runtime only: RMSNorm as `SimplifiedLayerNormalization` and
mask-free attention as `com.microsoft::MultiHeadAttention` on ltx-core's [B, T, heads*dim] tensors
(ORT's CPU kernel is a flash-style loop: no [B, heads, Tq, Tk] scores, 2 x 10.9 GB in float32 at
9,216 tokens otherwise). ORT's own transformer optimizer cannot produce these here: its attention
fusions match BERT/GPT-2/T5/UNet subgraph shapes, and LTX's (QK-norm, split RoPE, gating) is none.
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
from ltx_ascend.store import OPSET

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
    out.setType(x.type())  # keep static shapes flowing (the fused attention below needs them)
    return out


@symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
def _sdpa_npu(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Mask-free attention as Ascend's fused `npu::NPUPromptFlashAttention` (BNSD layout): the
    decomposed MatMul/Softmax/MatMul materialises [B, heads, Tq, Tk] (5.4 GB in bf16 for one 22B
    block at 9,216 tokens), the fused kernel never does. Masked or causal attention keeps torch's
    decomposition (PFA takes boolean masks, ours are additive floats)."""
    from torch.onnx._internal.torchscript_exporter.symbolic_opset14 import scaled_dot_product_attention

    if not symbolic_helper._is_none(attn_mask) or is_causal or dropout_p:
        return scaled_dot_product_attention(g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    heads = symbolic_helper._get_tensor_dim_size(query, 1)
    head_dim = symbolic_helper._get_tensor_dim_size(query, 3)
    kv_heads = symbolic_helper._get_tensor_dim_size(key, 1)
    if heads is None or head_dim is None:
        return scaled_dot_product_attention(g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    scale_value = symbolic_helper._maybe_get_const(scale, "f")
    if scale_value is None or symbolic_helper._is_none(scale):
        scale_value = 1.0 / head_dim**0.5
    out = g.op(
        "npu::NPUPromptFlashAttention",
        query,
        key,
        value,
        num_heads_i=heads,
        scale_value_f=float(scale_value),
        pre_tokens_i=2**31 - 1,
        next_tokens_i=2**31 - 1,
        input_layout_s="BNSD",
        num_key_value_heads_i=kv_heads or heads,
    )
    out.setType(query.type())
    return out


def _rms_norm_ort(g, x, normalized_shape, weight, eps):
    """ORT's contrib `SimplifiedLayerNormalization` (ai.onnx domain, version 1): RMSNorm in one kernel."""
    rank = _normalized_rank(normalized_shape)
    eps_value = symbolic_helper._maybe_get_const(eps, "f")
    eps_value = 1e-6 if eps_value is None or symbolic_helper._is_none(eps) else eps_value
    if symbolic_helper._is_none(weight):  # the scale input is required: ones over the normalised dims
        sizes = symbolic_helper._get_tensor_sizes(x)
        if sizes is None or any(s is None for s in sizes[-rank:]):
            return _rms_norm_decomposed(g, x, normalized_shape, weight, eps)
        weight = g.op("Constant", value_t=torch.ones(sizes[-rank:], dtype=torch.float32))
        weight = g.op("CastLike", weight, x)
    out = g.op("SimplifiedLayerNormalization", x, weight, axis_i=-rank, epsilon_f=eps_value, stash_type_i=1)
    out.setType(x.type())
    return out


class _OrtMultiHeadAttention(torch.autograd.Function):
    """ltx-core's mask-free attention on [B, T, heads*dim], traced as one com.microsoft node."""

    @staticmethod
    def forward(ctx, q, k, v, heads, head_dim):
        b, _, inner = q.shape
        q4, k4, v4 = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q4, k4, v4)
        return out.transpose(1, 2).reshape(b, -1, inner)

    @staticmethod
    def symbolic(g, q, k, v, heads, head_dim):
        # ORT's default scale is 1/sqrt(head_size), as torch's SDPA
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=int(heads))
        out.setType(q.type())
        return out


class _NpuFlashAttentionBSH(_OrtMultiHeadAttention):
    """The same call as `npu::NPUPromptFlashAttention` in BSH layout, heads known from Python: used
    where the traced shapes are unknown to the exporter (after the Ascend W8A8 matmuls)."""

    @staticmethod
    def symbolic(g, q, k, v, heads, head_dim):
        out = g.op(
            "npu::NPUPromptFlashAttention",
            q,
            k,
            v,
            num_heads_i=int(heads),
            scale_value_f=float(1.0 / int(head_dim) ** 0.5),
            pre_tokens_i=2**31 - 1,
            next_tokens_i=2**31 - 1,
            input_layout_s="BSH",
            num_key_value_heads_i=int(heads),
        )
        out.setType(q.type())
        return out


@contextlib.contextmanager
def _fused_attention(function: type[torch.autograd.Function]) -> Iterator[None]:
    """Route ltx-core's PyTorch attention (mask-free calls) through `function` ([B, T, heads*dim])."""
    from ltx_core.model.transformer import attention

    original = attention.PytorchAttention.__call__

    def call(self, q, k, v, heads, mask=None):
        if mask is not None:
            return original(self, q, k, v, heads, mask)
        return function.apply(q, k, v, heads, int(q.shape[-1]) // heads)

    attention.PytorchAttention.__call__ = call
    try:
        yield
    finally:
        attention.PytorchAttention.__call__ = original


@contextlib.contextmanager
def export_symbolics(
    opset: int = OPSET, npu_ops: bool = False, ort_fused: bool = False, npu_bsh: bool = False
) -> Iterator[None]:
    """Register our symbolics (and the fused-attention route) for the duration of one export."""
    if npu_ops and ort_fused:
        raise ValueError("npu_ops and ort_fused exclude each other")
    fn = _rms_norm_npu if npu_ops else _rms_norm_ort if ort_fused else _rms_norm_decomposed
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", fn, opset)
    if npu_ops:
        torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", _sdpa_npu, opset)
    try:
        route = _OrtMultiHeadAttention if ort_fused else _NpuFlashAttentionBSH if npu_bsh else None
        with _fused_attention(route) if route else contextlib.nullcontext():
            yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::rms_norm", opset)
        if npu_ops:
            torch.onnx.unregister_custom_op_symbolic("aten::scaled_dot_product_attention", opset)


def export_onnx(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | Path,
    *,
    opset: int = OPSET,
    npu_ops: bool = False,
    ort_fused: bool = False,
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
        shapes = _trace(module, args, input_names, output_names, traced, opset, npu_ops, ort_fused, external_data)
        model = onnx.load(str(traced), load_external_data=True)
        if ort_fused:
            _declare_domain(model, "com.microsoft")
        if npu_ops:
            _declare_domain(model, "npu")
        _move_alias_to_default_domain(model)
        if npu_ops or ort_fused:
            # ONNX shape inference knows no npu:: / com.microsoft op: restore the static output shapes the trace saw.
            _set_output_shapes(model, shapes[: len(output_names)])
        _save_and_move(model, tmp_dir, path, external_data)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _trace(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    traced: Path,
    opset: int,
    npu_ops: bool,
    ort_fused: bool,
    external_data: bool,
) -> list[tuple[int, ...]]:
    """TorchScript-export `module(*args)` to `traced` under our symbolics, lowering and patches; the
    output shapes the trace saw (a forward hook), which the fused ops' graphs cannot infer."""
    shapes: list[tuple[int, ...]] = []
    hook = module.register_forward_hook(lambda _m, _i, out: shapes.extend(
        tuple(t.shape) for t in (out if isinstance(out, tuple) else (out,))
    ))  # fmt: skip
    from ltx_ascend.export.quantize import lowering

    with (
        # The Ascend W8A8 graph (opset 16) loses traced shapes after its matmuls: BSH attention there.
        export_symbolics(opset, npu_ops, ort_fused, npu_bsh=npu_ops and opset < OPSET),
        lowering("npu" if npu_ops else "ort"),
        export_patches(),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
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
    hook.remove()
    return shapes


def _save_and_move(model: onnx.ModelProto, tmp_dir: Path, path: Path, external_data: bool) -> None:
    """Save in `tmp_dir` and move into place, the .data file first so that no reader finds an .onnx
    without its weights."""
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


def _set_output_shapes(model: onnx.ModelProto, shapes: Sequence[tuple[int, ...]]) -> None:
    for output, shape in zip(model.graph.output, shapes, strict=True):
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for size in shape:
            dims.add().dim_value = int(size)


def _move_alias_to_default_domain(model: onnx.ModelProto) -> None:
    """Ops traced under quantize.AI_ONNX_ALIAS belong to ai.onnx (Ascend's names registered there)."""
    from ltx_ascend.export.quantize import AI_ONNX_ALIAS

    moved = False
    for node in model.graph.node:
        if node.domain == AI_ONNX_ALIAS:
            node.domain = ""
            moved = True
    kept = [o for o in model.opset_import if o.domain != AI_ONNX_ALIAS]
    if moved or len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)


def _declare_domain(model: onnx.ModelProto, domain: str) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
