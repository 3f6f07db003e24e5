"""Ascend's fused ops of an `--npu-ops` graph written out in standard ONNX ops: their CPU reference.

No NPU or ATC here, yet an npu-ops graph has to be checked on this machine: its split segments
need static boundary shapes (export/dit_split.py probes them on ONNX Runtime), the exporter
compares its numbers with eager ltx-core, and the om stand-in of the tests runs it. Each op is
replaced by the arithmetic CANN documents for it, at the graph's dtype:

- `npu::NPURmsNorm(x, gamma) -> (y, rstd)`: y = x / sqrt(mean(x^2) + eps) * gamma over gamma's dims;
- `npu::NPUPromptFlashAttention(q, k, v)`: softmax(q k^T * scale_value) v, BNSD or BSH
  (`num_heads` heads), mask-free as our exporter emits it;
- `NPUDynamicQuant(x) -> (int8 y, float32 scale)`: symmetric per token (last axis), scale = max|x| / 127;
- `QuantBatchMatMul(x1, x2, scale, offset, bias, pertoken_scale)`: int32 x1 @ x2^T (`transpose_x2`),
  times `scale` per output channel and `pertoken_scale` per row, plus `bias`, in `dtype`.

This is a reference for numerics on CPU, not a claim about the NPU kernels' rounding.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NPU_DOMAIN = "npu"
# Ascend ops CANN's parser registers in the ai.onnx domain (the W8A8 lowering, export/quantize.py).
ASCEND_DEFAULT_DOMAIN_OPS = frozenset({"NPUDynamicQuant", "QuantBatchMatMul"})
_GE_DTYPE = {0: TensorProto.FLOAT, 1: TensorProto.FLOAT16, 27: TensorProto.BFLOAT16}  # QuantBatchMatMul `dtype`


def is_ascend_op(node: onnx.NodeProto) -> bool:
    return node.domain == NPU_DOMAIN or (node.domain in ("", "ai.onnx") and node.op_type in ASCEND_DEFAULT_DOMAIN_OPS)


def has_ascend_ops(model: onnx.ModelProto) -> bool:
    return any(is_ascend_op(n) for n in model.graph.node)


def output_elem_types(node: onnx.NodeProto, input_types: list[int]) -> list[int] | None:
    """The element types of an Ascend op's outputs from its inputs' (None: not an Ascend op)."""
    if not is_ascend_op(node):
        return None
    if node.op_type == "NPURmsNorm":
        return [input_types[0], TensorProto.FLOAT]
    if node.op_type == "NPUPromptFlashAttention":
        return [input_types[0]]
    if node.op_type == "NPUDynamicQuant":
        return [TensorProto.INT8, TensorProto.FLOAT]
    if node.op_type == "QuantBatchMatMul":
        return [_GE_DTYPE[_attrs(node).get("dtype", 0)]]
    raise ValueError(f"no reference for the Ascend op {node.domain}::{node.op_type}")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Writer:
    """Emits the standard-op replacement of one node, with fresh value names, at the graph's opset."""

    def __init__(self, node: onnx.NodeProto, opset: int, counter: itertools.count) -> None:
        self.prefix = f"{node.name or node.op_type}/ref"
        self.opset, self.counter, self.nodes = opset, counter, []
        self.constants: list[onnx.TensorProto] = []

    def name(self) -> str:
        return f"{self.prefix}_{next(self.counter)}"

    def op(self, op_type: str, *inputs: str, outputs: list[str] | None = None, **attrs) -> str:
        outputs = outputs or [self.name()]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=self.name(), **attrs))
        return outputs[0]

    def const(self, value, dtype=np.float32) -> str:
        name = self.name()
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        """ReduceMean/ReduceMax: axes as an input from opset 18, an attribute before."""
        if self.opset >= 18:
            return self.op(op_type, x, self.const(axes, np.int64), keepdims=keepdims)
        return self.op(op_type, x, axes=axes, keepdims=keepdims)

    def unsqueeze_last(self, x: str) -> str:
        return self.op("Unsqueeze", x, self.const([-1], np.int64))


def _rms_norm(w: _Writer, node: onnx.NodeProto, rank: int) -> None:
    x, gamma = node.input[:2]
    eps = _attrs(node).get("epsilon", 1e-6)
    x32 = w.op("Cast", x, to=TensorProto.FLOAT)
    mean_sq = w.reduce("ReduceMean", w.op("Mul", x32, x32), list(range(-rank, 0)))
    root = w.op("Sqrt", w.op("Add", mean_sq, w.const(eps)))
    normed = w.op("CastLike", w.op("Div", x32, root), x)
    w.op("Mul", normed, gamma, outputs=[node.output[0]])
    if len(node.output) > 1 and node.output[1]:
        w.op("Reciprocal", root, outputs=[node.output[1]])


def _attention(w: _Writer, node: onnx.NodeProto) -> None:
    q, k, v = node.input[:3]
    a = _attrs(node)
    layout = a.get("input_layout", b"BSH")
    layout = layout.decode() if isinstance(layout, bytes) else layout
    heads = int(a["num_heads"])
    if layout == "BSH":
        split = w.const([0, 0, heads, -1], np.int64)
        q, k, v = (w.op("Transpose", w.op("Reshape", t, split), perm=[0, 2, 1, 3]) for t in (q, k, v))
    elif layout != "BNSD":
        raise ValueError(f"NPUPromptFlashAttention layout {layout}: the reference knows BSH and BNSD")
    scores = w.op("MatMul", q, w.op("Transpose", k, perm=[0, 1, 3, 2]))
    scale = w.op("CastLike", w.const(float(a["scale_value"])), scores)
    probs = w.op("Softmax", w.op("Mul", scores, scale), axis=-1)
    if layout == "BNSD":
        w.op("MatMul", probs, v, outputs=[node.output[0]])
        return
    out = w.op("Transpose", w.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    w.op("Reshape", out, w.const([0, 0, -1], np.int64), outputs=[node.output[0]])


def _dynamic_quant(w: _Writer, node: onnx.NodeProto) -> None:
    x32 = w.op("Cast", node.input[0], to=TensorProto.FLOAT)
    amax = w.reduce("ReduceMax", w.op("Abs", x32), [-1])
    scale = w.op("Div", w.op("Max", amax, w.const(1e-8)), w.const(127.0))
    q = w.op("Clip", w.op("Round", w.op("Div", x32, scale)), w.const(-127.0), w.const(127.0))
    w.op("Cast", q, to=TensorProto.INT8, outputs=[node.output[0]])
    if len(node.output) > 1 and node.output[1]:
        w.op("Squeeze", scale, w.const([-1], np.int64), outputs=[node.output[1]])


def _quant_matmul(w: _Writer, node: onnx.NodeProto) -> None:
    x1, x2, scale = node.input[:3]
    bias = node.input[4] if len(node.input) > 4 else ""
    per_token = node.input[5] if len(node.input) > 5 else ""
    a = _attrs(node)
    if a.get("transpose_x1", 0):
        raise ValueError("QuantBatchMatMul with transpose_x1: the reference knows x1 untransposed")
    if len(node.input) > 3 and node.input[3]:
        raise ValueError("QuantBatchMatMul with an offset: the reference knows symmetric weights")
    weight = w.op("Transpose", x2, perm=[1, 0]) if a.get("transpose_x2", 0) else x2
    y = w.op("Mul", w.op("Cast", w.op("MatMulInteger", x1, weight), to=TensorProto.FLOAT), scale)
    if per_token:
        y = w.op("Mul", y, w.unsqueeze_last(per_token))
    if bias:
        y = w.op("Add", y, w.op("Cast", bias, to=TensorProto.FLOAT))
    w.op("Cast", y, to=_GE_DTYPE[a.get("dtype", 0)], outputs=[node.output[0]])


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    for v in (*graph.input, *graph.value_info):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def lower_ascend_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every Ascend op replaced by its standard-op reference (runs on ORT)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    ranks, counter = _ranks(model), itertools.count()
    nodes, constants = [], []
    for node in model.graph.node:
        if not is_ascend_op(node):
            nodes.append(node)
            continue
        w = _Writer(node, opset, counter)
        if node.op_type == "NPURmsNorm":
            _rms_norm(w, node, ranks.get(node.input[1], 1))
        elif node.op_type == "NPUPromptFlashAttention":
            _attention(w, node)
        elif node.op_type == "NPUDynamicQuant":
            _dynamic_quant(w, node)
        elif node.op_type == "QuantBatchMatMul":
            _quant_matmul(w, node)
        else:
            raise ValueError(f"no reference for the Ascend op {node.domain}::{node.op_type}")
        nodes += w.nodes
        constants += w.constants
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(constants)
    kept = [o for o in model.opset_import if o.domain != NPU_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return fold_shape_ifs(model)


def fold_shape_ifs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline each `If(Equal(Gather(Shape(x), i), c))` whose `x` has a static shape: the exporter writes
    them for a `squeeze(dim)` on a tensor whose shape it lost (after Ascend's W8A8 ops), and ONNX
    Runtime refuses the branch that cannot run on the real shape. Repeated until none is left to fold."""
    while True:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        graph = inferred.graph
        shapes = {}
        for v in (*graph.input, *graph.value_info, *graph.output):
            dims = v.type.tensor_type.shape.dim if v.type.tensor_type.HasField("shape") else None
            if dims is not None and all(d.HasField("dim_value") for d in dims):
                shapes[v.name] = [d.dim_value for d in dims]
        producer = {o: n for n in model.graph.node for o in n.output}
        folded = False
        nodes = []
        for node in model.graph.node:
            taken = _if_branch(node, producer, shapes) if node.op_type == "If" else None
            if taken is None:
                nodes.append(node)
                continue
            rename = {o.name: new for o, new in zip(taken.output, node.output, strict=True)}
            for inner in taken.node:
                copy = onnx.NodeProto.FromString(inner.SerializeToString())
                copy.name = f"{node.name}/{inner.name or inner.op_type}"
                copy.input[:] = [rename.get(n, n) for n in copy.input]
                copy.output[:] = [rename.get(n, f"{node.name}/{n}") for n in copy.output]
                nodes.append(copy)
            local = {o for inner in taken.node for o in inner.output}
            for copy in nodes[len(nodes) - len(taken.node) :]:
                copy.input[:] = [f"{node.name}/{n}" if n in local and n not in rename else n for n in copy.input]
            folded = True
        if not folded:
            return model
        del model.graph.node[:]
        model.graph.node.extend(nodes)


def _if_branch(node: onnx.NodeProto, producer: dict, shapes: dict) -> onnx.GraphProto | None:
    """The branch an If takes when its condition is a static shape test, else None."""
    equal = producer.get(node.input[0])
    if equal is None or equal.op_type != "Equal":
        return None
    values = [_static_int(name, producer, shapes) for name in equal.input]
    if None in values:
        return None
    branches = {a.name: a.g for a in node.attribute}
    return branches["then_branch" if values[0] == values[1] else "else_branch"]


def _static_int(name: str, producer: dict, shapes: dict) -> int | None:
    """A scalar known before run time: a Constant, or Gather(Shape(x) or a constant shape, constant i)."""

    def constant(value: str) -> np.ndarray | None:
        src = producer.get(value)
        if src is None or src.op_type != "Constant" or src.attribute[0].name != "value":
            return None
        return numpy_helper.to_array(src.attribute[0].t)

    src = producer.get(name)
    if src is None:
        return None
    if src.op_type == "Constant":
        value = constant(name)
        return None if value is None or value.size != 1 else int(value.reshape(-1)[0])
    if src.op_type != "Gather" or constant(src.input[1]) is None:
        return None
    index = int(constant(src.input[1]).reshape(-1)[0])
    table = constant(src.input[0])
    if table is None:
        shape_node = producer.get(src.input[0])
        if shape_node is None or shape_node.op_type != "Shape" or len(shape_node.attribute):
            return None
        if shape_node.input[0] not in shapes:
            return None
        table = np.asarray(shapes[shape_node.input[0]])
    return int(table.reshape(-1)[index])


def ort_session(path):
    """An ONNX Runtime CPU session of the graph at `path`, its Ascend ops (if any) as their reference."""
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    if not has_ascend_ops(model):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = lower_ascend_ops(onnx.load(str(path)))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
