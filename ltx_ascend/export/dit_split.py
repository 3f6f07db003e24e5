"""The DiT block graph cut at its attention cores: the compiled form of Ulysses sequence parallel.

Ulysses (engine/parallel.py) swaps the token split for a head split around four attention
cores of every block (video and audio self-attention, the two A-V cross-attentions) by
all-to-alls, which no ONNX or .om graph can hold. So the block is traced once with those cores as
marker nodes (`ltx_ulysses::AttentionCore`) and the ONNX graph is cut at them into segments:

  segment 0: AdaLN, norms, q/k/v of both self-attentions (video and audio do not wait on each other)
  segment 1: their outputs, the text cross-attentions (whole prompt on every rank: stays inside),
             q/k/v of both A-V cross-attentions
  segment 2: their outputs, the feed-forwards, the block outputs

Each segment reads named tensors: block inputs, the cores' outputs (`<core>.out`) and values an
earlier segment computed (`carry.<n>`); it writes the cores' `<core>.q/.k/.v` and what later
segments read. Every node is placed as late as its consumers allow, so nothing is carried that a
later segment can compute from block inputs alone (cheap ops on inputs are recomputed where used).
The segments run on one rank's token shard at a static shape; `run_segments` runs the cores
between them, eagerly: with a plain core the chain is the block (U = 1), with the Ulysses core it
is the sequence-parallel block. Only the graph is cut: every op is the one the whole block graph has.

What the runner needs of the cut (the cores, the token shards, the segments' names, `run_segments`) is
the runner's contract too (`ltx_ascend/dit_graph/segments.py`); those names stay importable from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from ltx_core.model.transformer.attention import AttentionFunction
from ltx_core.model.transformer.transformer import BasicAVTransformerBlock

from ltx_ascend.dit_graph.segments import (  # noqa: F401 (the contract's names, also importable from here)
    CORES,
    ROPE_FEEDS,
    SEGMENT_VARIANT,
    TOKEN_FEEDS,
    Attend,
    Segment,
    SegmentChain,
    plain_attend,
    run_segments,
    segment_names,
    segment_prefix,
    shard_feeds,
    shard_tokens,
)
from ltx_ascend.errors import UserError

MARKER_DOMAIN = "ltx_ulysses"
MARKER_OP = "AttentionCore"
# Ops that read only block inputs and cost little are recomputed in each segment that needs them
# instead of being carried; anything else is computed once.
HEAVY_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "Softmax", "MultiHeadAttention", "NPUPromptFlashAttention",  # float
    "MatMulInteger", "QuantBatchMatMul",  # W8A8 (ORT's and Ascend's int8 matmuls)
})  # fmt: skip


def check_heads(block: BasicAVTransformerBlock, u: int) -> None:
    for name, _, _ in CORES:
        heads = getattr(block, name).heads
        if heads % u:
            raise UserError(f"{name} has {heads} heads, not divisible by ulysses={u}: choose a U that divides it")


class _CoreMarker(torch.autograd.Function):
    """ltx-core's attention core (SDPA on [B, T, heads*dim]), traced as one marker node."""

    @staticmethod
    def forward(ctx, q, k, v, heads, core):
        return AttentionFunction.PYTORCH(q, k, v, heads, None)

    @staticmethod
    def symbolic(g, q, k, v, heads, core):
        out = g.op(f"{MARKER_DOMAIN}::{MARKER_OP}", q, k, v, heads_i=int(heads), core_s=core)
        out.setType(q.type())
        return out


@contextlib.contextmanager
def marked_cores(block: BasicAVTransformerBlock) -> Iterator[None]:
    """The block's Ulysses cores trace as marker nodes (as `parallel.install` wraps them at run time)."""
    saved = {name: getattr(block, name).attention_function for name, _, _ in CORES}

    def marker(core: str):
        def call(q, k, v, heads, mask=None):
            if mask is not None:
                raise ValueError(f"{core}: a masked attention core cannot be split (the block graph takes no mask)")
            return _CoreMarker.apply(q, k, v, heads, core)

        return call

    for name in saved:
        getattr(block, name).attention_function = marker(name)
    try:
        yield
    finally:
        for name, function in saved.items():
            getattr(block, name).attention_function = function


# ----------------------------------------------------------------------------------------------
# Cutting the traced graph


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _fused_output_types(node: onnx.NodeProto, elem: Mapping[str, int]) -> list[int] | None:
    """Element types of a fused op's outputs (ONNX's inference knows no com.microsoft, npu or Ascend
    W8A8 op), or None when it is a standard op or its inputs are not typed yet."""
    from ltx_ascend.export import npu_reference

    types = [elem.get(n, 0) for n in node.input]
    if npu_reference.is_ascend_op(node):
        return npu_reference.output_elem_types(node, types) if types and types[0] else None
    if node.op_type in ("MultiHeadAttention", "SimplifiedLayerNormalization") and types and types[0]:
        return [types[0]] + [onnx.TensorProto.FLOAT] * (len(node.output) - 1)
    return None


def _has_fused_ops(model: onnx.ModelProto) -> bool:
    """Ops of the fused variants that ONNX's own schemas do not know (ORT contrib, Ascend)."""
    from ltx_ascend.export import npu_reference

    contrib = ("MultiHeadAttention", "SimplifiedLayerNormalization")
    return any(n.op_type in contrib or n.domain == "com.microsoft" or npu_reference.is_ascend_op(n)
               for n in model.graph.node)  # fmt: skip


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every value's element type (segment inputs and outputs declare it): ONNX shape inference, with
    each marker's output typed as its query (the core keeps [B, Tq, heads*dim]) and each fused op's
    outputs typed by `_fused_output_types`, repeated until nothing new is typed. Its shapes are not
    all static here, so `_static_shapes` measures them."""
    while True:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {v.name: v for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
        elem = {n: v.type.tensor_type.elem_type for n, v in known.items()}
        elem |= {t.name: t.data_type for t in model.graph.initializer}
        added = 0
        for node in model.graph.node:
            if node.domain == MARKER_DOMAIN:
                if node.output[0] not in known and node.input[0] in known:
                    value = onnx.ValueInfoProto.FromString(known[node.input[0]].SerializeToString())
                    value.name = node.output[0]
                    model.graph.value_info.append(value)
                    added += 1
                continue
            if all(elem.get(o) for o in node.output if o):
                continue
            types = _fused_output_types(node, elem)
            for out, t in zip(node.output, types or (), strict=False):
                if out and not elem.get(out):
                    model.graph.value_info.append(onnx.helper.make_tensor_value_info(out, t, None))
                    added += 1
        if not added:
            return model


def split_graph(model: onnx.ModelProto, sample: Mapping[str, torch.Tensor]) -> list[onnx.ModelProto]:
    """The segments of a graph with marker nodes, in order (see the module docstring); `sample`: the
    graph's feeds at its static shapes, which fix the segments' boundary shapes."""
    _name_cores(model.graph)
    from ltx_ascend.export.npu_reference import fold_shape_ifs

    model = _typed(fold_shape_ifs(_fold_shapes(model, sample)))
    graph = model.graph
    free = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    is_marker = [n.domain == MARKER_DOMAIN for n in nodes]
    outputs = {o.name for o in graph.output}
    boundary, input_only = _earliest_segments(nodes, is_marker, free)
    last = max(boundary.values()) + 1
    where = _node_segments(nodes, is_marker, boundary, input_only, outputs, last)
    produced = [{o for i, n in enumerate(nodes) if s in where[i] for o in n.output} for s in range(last + 1)]
    written = _segment_writes(nodes, is_marker, boundary, where, produced, free, outputs, last)
    initializers = {t.name: t for t in graph.initializer}
    segments, carried = _segment_io(nodes, is_marker, where, produced, written, outputs, last)
    boundary_values = [n for _, read, out in segments for n in (*read, *out) if n not in initializers]
    shapes = _static_shapes(model, sample, list(dict.fromkeys(boundary_values)))
    return _segment_models(model, segments, carried, shapes)


def _name_cores(graph: onnx.GraphProto) -> None:
    """Name each attention core's q, k, v and output `<core>.q` etc. (in place): the runtime finds the
    values it runs between segments by these names."""
    markers = [n for n in graph.node if n.domain == MARKER_DOMAIN]
    if not markers:
        raise ValueError("no attention-core markers in the traced block graph")
    for node in markers:
        core = next(a.s.decode() for a in node.attribute if a.name == "core")
        if len(set(node.input)) != 3:
            raise ValueError(f"{core}: q, k and v must be three distinct tensors to be named")
        for old, slot in zip((*node.input, *node.output), ("q", "k", "v", "out"), strict=True):
            _rename(graph, old, f"{core}.{slot}")


def _earliest_segments(
    nodes: list[onnx.NodeProto], is_marker: list[bool], free: set[str]
) -> tuple[dict[int, int], list[bool]]:
    """Earliest segment each value exists in; a marker's output one boundary after its inputs. Returns
    each marker's boundary (by node index) and which nodes read only block inputs (never through a marker)."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    ready: dict[str, int] = dict.fromkeys(free, 0)
    boundary: dict[int, int] = {}
    input_only = [False] * len(nodes)  # reads only block inputs (never through a marker)
    for i, node in enumerate(nodes):
        stage = max((ready[n] for n in node.input), default=0)
        if is_marker[i]:
            boundary[i] = stage
            stage += 1
        else:
            input_only[i] = all(n in free or input_only[producer[n]] for n in node.input)
        for out in node.output:
            ready[out] = stage
    return boundary, input_only


def _node_segments(
    nodes: list[onnx.NodeProto],
    is_marker: list[bool],
    boundary: dict[int, int],
    input_only: list[bool],
    outputs: set[str],
    last: int,
) -> list[set[int]]:
    """Segments each node runs in: as late as its consumers allow (recomputed where used if cheap and
    input-only); none for a dead node or a marker."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for n in node.input:
            consumers.setdefault(n, []).append(i)
    where: list[set[int]] = [set() for _ in nodes]
    for i in reversed(range(len(nodes))):
        if is_marker[i]:
            continue
        uses: set[int] = set()
        for out in nodes[i].output:
            if out in outputs:
                uses.add(last)
            for c in consumers.get(out, ()):
                uses |= {boundary[c]} if is_marker[c] else where[c]
        if not uses:
            continue  # dead: nothing reads it
        cheap = input_only[i] and nodes[i].op_type not in HEAVY_OPS
        where[i] = uses if cheap else {min(uses)}
    return where


def _segment_writes(
    nodes: list[onnx.NodeProto],
    is_marker: list[bool],
    boundary: dict[int, int],
    where: list[set[int]],
    produced: list[set[str]],
    free: set[str],
    outputs: set[str],
    last: int,
) -> list[set[str]]:
    """The values each segment hands out: those a later segment, a core or the block's outputs read."""
    written: list[set[str]] = [set() for _ in range(last + 1)]
    core_out = {n.output[0] for i, n in enumerate(nodes) if is_marker[i]}  # the runtime's, between segments

    def need(value: str, segment: int, local: bool) -> None:
        """`value` is read in `segment`: computed there (`local`), or written by the latest earlier one."""
        if value in free or value in core_out or (local and value in produced[segment]):
            return
        if value in produced[segment]:  # a core's q/k/v: the segment hands it out
            written[segment].add(value)
            return
        earlier = [s for s in range(segment) if value in produced[s]]
        if not earlier:
            raise ValueError(f"{value} is read in segment {segment} before any segment computes it")
        written[earlier[-1]].add(value)

    for i, node in enumerate(nodes):
        for value in (n for n in node.input if n):
            if is_marker[i]:
                need(value, boundary[i], local=False)
            for s in where[i]:
                need(value, s, local=True)
    for value in outputs:
        need(value, last, local=False)
    return written


def _segment_io(
    nodes: list[onnx.NodeProto],
    is_marker: list[bool],
    where: list[set[int]],
    produced: list[set[str]],
    written: list[set[str]],
    outputs: set[str],
    last: int,
) -> tuple[list[tuple[list[onnx.NodeProto], list[str], list[str]]], dict[str, str]]:
    """Each segment's (nodes, inputs, outputs), outputs in the order computed; and the `carry.N` names
    of the values that pass from one segment to a later one without being a core's or the block's."""
    core_values = {o for i, n in enumerate(nodes) if is_marker[i] for o in (*n.input, *n.output)}
    carried: dict[str, str] = {}
    segments = []
    for s in range(last + 1):
        body = [n for i, n in enumerate(nodes) if s in where[i]]
        read = [n for node in body for n in node.input if n and n not in produced[s]]
        order = {n: k for k, n in enumerate(o for node in body for o in node.output)}
        out = sorted(written[s], key=order.__getitem__)
        segments.append((body, list(dict.fromkeys(read)), out))
        for value in out:
            if value not in outputs and value not in core_values:
                carried.setdefault(value, f"carry.{len(carried)}")
    return segments, carried


def _segment_models(
    model: onnx.ModelProto,
    segments: list[tuple[list[onnx.NodeProto], list[str], list[str]]],
    carried: dict[str, str],
    shapes: dict,
) -> list[onnx.ModelProto]:
    """One checked ONNX model per segment, its boundary values declared at their static shapes and the
    carried ones renamed."""
    graph = model.graph
    types = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    initializers = {t.name: t for t in graph.initializer}
    elem = {name: v.type.tensor_type.elem_type for name, v in types.items() if v.type.tensor_type.elem_type}

    def declared(name: str) -> onnx.ValueInfoProto:
        if not elem.get(name):
            raise ValueError(f"no element type known for {name}")
        return onnx.helper.make_tensor_value_info(carried.get(name, name), elem[name], shapes[name])

    models = []
    opsets = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    for s, (body, read, out) in enumerate(segments):
        seg = onnx.helper.make_graph(
            [onnx.NodeProto.FromString(n.SerializeToString()) for n in body],
            f"{graph.name}_segment{s}",
            [declared(n) for n in read if n not in initializers],
            [declared(n) for n in out],
            [initializers[n] for n in read if n in initializers],
        )
        for old, new in carried.items():
            for node in seg.node:
                node.input[:] = [new if n == old else n for n in node.input]
                node.output[:] = [new if n == old else n for n in node.output]
        result = onnx.helper.make_model(seg, opset_imports=opsets, producer_name=model.producer_name)
        result.ir_version = model.ir_version
        if not _has_fused_ops(result):  # ONNX's checker refuses ops it has no schema for (the lint and
            onnx.checker.check_model(result, full_check=True)  # the exporter's ORT check see those)
        models.append(result)
    return models


def _fold_shapes(model: onnx.ModelProto, sample: Mapping[str, torch.Tensor]) -> onnx.ModelProto:
    """Every `Shape` node as the constant it is at the sample's static shapes. A shape computed from a
    value inside the block would otherwise cross a cut as an int64 tensor (ATC takes float and int32
    boundaries only), where as a constant it is recomputed for free in each segment that needs it."""
    shape_nodes = [n for n in model.graph.node if n.op_type == "Shape"]
    if not shape_nodes:
        return model
    shapes = _static_shapes(model, sample, list(dict.fromkeys(n.input[0] for n in shape_nodes)))
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if node.op_type != "Shape":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        dims = shapes[node.input[0]][attrs.get("start", 0) : attrs.get("end")]
        value = onnx.numpy_helper.from_array(np.asarray(dims, dtype=np.int64), f"{node.output[0]}.value")
        node.op_type, node.domain = "Constant", ""
        del node.input[:]
        node.ClearField("attribute")
        node.attribute.append(onnx.helper.make_attribute("value", value))
    return model


def _static_shapes(model: onnx.ModelProto, sample: Mapping[str, torch.Tensor], names: list[str]) -> dict:
    """The shape of each of `names`, from one ONNX Runtime run of the graph on the sample feeds with
    every marker an Identity of its query (same shape as the core's output). ONNX shape inference
    cannot tell: the traced RoPE reshapes compute their shapes (Shape/Concat) in the graph. Runs in
    float32 whatever the graph dtype (ORT's CPU provider has no bfloat16 kernels; shapes are the same)."""
    import onnxruntime as ort

    from ltx_ascend.export import npu_reference

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for node in probe.graph.node:
        if node.domain == MARKER_DOMAIN:
            q = node.input[0]
            node.ClearField("attribute")
            node.domain, node.op_type = "", "Identity"
            node.input[:] = [q]
    kept = [o for o in probe.opset_import if o.domain != MARKER_DOMAIN]
    del probe.opset_import[:]
    probe.opset_import.extend(kept)
    if npu_reference.has_ascend_ops(probe):  # ORT cannot run Ascend's ops: their reference, same shapes
        probe = npu_reference.lower_ascend_ops(probe)
    _bfloat16_to_float32(probe)
    known = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    del probe.graph.value_info[:]
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: _probe_feed(sample[i.name]) for i in session.get_inputs()}
    wanted = [n for n in names if n not in feeds]
    shapes = {n: list(a.shape) for n, a in zip(wanted, session.run(wanted, feeds), strict=True)}
    return shapes | {n: list(a.shape) for n, a in feeds.items()}


def _probe_feed(t: torch.Tensor):
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _bfloat16_to_float32(model: onnx.ModelProto) -> None:
    """In place: every bfloat16 type, cast, constant and initializer of the graph in float32."""
    import numpy as np

    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT

    def tensor(t: onnx.TensorProto) -> onnx.TensorProto:
        if t.data_type != bf16:
            return t
        return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float32), t.name)

    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == bf16:
            value.type.tensor_type.elem_type = f32
    for i, t in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(tensor(t))
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == bf16:
                a.i = f32
            if a.type == onnx.AttributeProto.TENSOR:
                a.t.CopyFrom(tensor(a.t))


def write_segments(path: Path, sample: Mapping[str, torch.Tensor], kind: str = "") -> list[tuple[str, Path]]:
    """Cut the traced block graph at `path` into `dit-segment<i>.onnx` beside it (`path` removed)."""
    model = onnx.load(str(path))
    parts = []
    for i, segment in enumerate(split_graph(model, sample)):
        name = f"{segment_prefix(kind)}{i}"
        target = path.with_name(f"{name}.onnx")
        onnx.save_model(segment, str(target))
        parts.append((name, target))
    path.unlink()
    return parts


# ----------------------------------------------------------------------------------------------
# Running the segments


class _OrtSegment:
    """One segment file on ONNX Runtime's CPU provider (the exporter's check; the runtime has Sessions);
    Ascend's ops as their reference (export/npu_reference.py)."""

    def __init__(self, path: Path) -> None:
        from ltx_ascend.export.npu_reference import ort_session

        self.session = ort_session(path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = self.session.run(self.output_names, {n: feeds[n].numpy() for n in self.input_names})
        return {n: torch.from_numpy(a) for n, a in zip(self.output_names, arrays, strict=True)}


class BlockSplit:
    """The `GraphSplit` of the block graph: cut at its cores; checked as segments + plain cores."""

    def __init__(
        self,
        block: BasicAVTransformerBlock,
        output_names: Sequence[str],
        sample: Mapping[str, torch.Tensor],
        kind: str = "",
    ) -> None:
        self.block, self.output_names, self.sample, self.kind = block, tuple(output_names), sample, kind

    def write(self, path: Path) -> list[tuple[str, Path]]:
        return write_segments(path, self.sample, self.kind)

    def run(self, files: dict[str, Path], feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        segments = [_OrtSegment(files[name]) for name in segment_names(list(files), self.kind)]
        with torch.no_grad():
            values = run_segments(segments, plain_attend(self.block), feeds)
        return [values[n] for n in self.output_names]


def core_notes(block: BasicAVTransformerBlock) -> list[dict]:
    """What the manifest records of each cut: the core, its heads, which modalities meet there."""
    return [
        {"core": name, "heads": getattr(block, name).heads, "q": q, "kv": kv}
        for name, q, kv in CORES
    ]
