"""ATC lint: catch what CANN's ONNX parser would reject before spending minutes (and an NPU host) on ATC.

The rules mirror how ATC reads an ONNX file (docs/reference-figures.md, "CANN ATC"): it looks every node up as
`<domain>::<model opset of that domain>::<op_type>` with no fallback, compiles static shapes, and reads
external-data initializers from files beside the .onnx. The model is loaded without its external data,
so linting a multi-GB export costs only the graph.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import GraphProto, ModelProto, TensorProto

from ltx_ascend.errors import UserError

ALLOWED_OPSETS = (16, 17, 18)
"""ai.onnx opsets we export to: ATC registers standard ops up to 18 and LayerNormalization from 17; the
Ascend W8A8 DiT is exported at 16, the last opset CANN registers QuantBatchMatMul for."""

ORT_DOMAINS = ("ai.onnx", "com.microsoft")
"""Domains an ONNX Runtime-only graph (`ort-fused`, ORT's w8a8) may use; ATC's registry does not apply."""

MODEL = "<model>"

_DEFAULT_DOMAIN = "ai.onnx"
_ALWAYS_ALLOWED = {(_DEFAULT_DOMAIN, "Constant")}  # the parser folds Constant itself

_FLOAT64_COMPLEX = {TensorProto.DOUBLE, TensorProto.COMPLEX64, TensorProto.COMPLEX128}
_BOUNDARY_BANNED = _FLOAT64_COMPLEX | {TensorProto.BOOL, TensorProto.INT64}

# Bytes per element for the fixed-size types whose external length we can check.
_ITEMSIZE = {
    TensorProto.FLOAT: 4,
    TensorProto.FLOAT16: 2,
    TensorProto.BFLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.INT8: 1,
    TensorProto.UINT8: 1,
    TensorProto.INT16: 2,
    TensorProto.UINT16: 2,
    TensorProto.INT32: 4,
    TensorProto.UINT32: 4,
    TensorProto.INT64: 8,
    TensorProto.UINT64: 8,
    TensorProto.BOOL: 1,
    TensorProto.COMPLEX64: 8,
    TensorProto.COMPLEX128: 16,
}


@dataclass(frozen=True)
class Violation:
    """One lint finding: which rule, which node or tensor, and what is wrong with it."""

    rule: str
    node: str
    detail: str


@functools.lru_cache(maxsize=1)
def atc_op_registry() -> frozenset[str]:
    """Keys `domain::version::OpType` that ATC's ONNX parser registers (packaged atc_onnx_ops.json)."""
    text = resources.files("ltx_ascend").joinpath("data", "atc_onnx_ops.json").read_text(encoding="utf-8")
    ops = json.loads(text)["ops"]
    return frozenset(
        f"{domain}::{version}::{op_type}"
        for domain, table in ops.items()
        for op_type, versions in table.items()
        for version in versions
    )


def _domain(domain: str) -> str:
    return domain or _DEFAULT_DOMAIN


def _dtype_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"dtype {elem_type}"


def _load(path: str | os.PathLike[str], max_protobuf_bytes: int) -> tuple[ModelProto | None, list[Violation]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file; export the model first")
    file_size = path.stat().st_size
    if file_size > max_protobuf_bytes:
        # A protobuf this large cannot be parsed at all; say why instead of failing inside onnx.
        return None, [_size_violation(file_size, max_protobuf_bytes)]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, OSError) as exc:
        raise UserError(f"{path}: not a readable ONNX model ({exc}); re-export it") from None
    return model, []


def _size_violation(size: int, limit: int) -> Violation:
    return Violation(
        "size",
        MODEL,
        f"serialized model is {size} bytes, over the {limit}-byte protobuf limit; "
        "export with external data (save_as_external_data=True)",
    )


def _walk_graphs(graph: GraphProto, prefix: str = "") -> Iterator[tuple[str, GraphProto]]:
    """Yield (name prefix, graph) for the graph and every subgraph (If branches and the like)."""
    yield prefix, graph
    for index, node in enumerate(graph.node):
        owner = node.name or f"{node.op_type}_{index}"
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub_index, sub in enumerate(subgraphs):
                suffix = attr.name if len(subgraphs) == 1 else f"{attr.name}[{sub_index}]"
                yield from _walk_graphs(sub, f"{prefix}{owner}/{suffix}/")


def _opset_versions(model: ModelProto) -> dict[str, int]:
    return {_domain(entry.domain): entry.version for entry in model.opset_import}


def _check_opset(opsets: dict[str, int]) -> list[Violation]:
    version = opsets.get(_DEFAULT_DOMAIN)
    if version is None:
        return [Violation("opset", MODEL, "no ai.onnx opset_import; export with opset_version=18")]
    if version not in ALLOWED_OPSETS:
        allowed = " or ".join(map(str, ALLOWED_OPSETS))
        return [
            Violation(
                "opset",
                MODEL,
                f"ai.onnx opset {version}; ATC registers standard ops up to 18 only, export with opset {allowed}",
            )
        ]
    return []


def _check_ops(model: ModelProto, opsets: dict[str, int]) -> list[Violation]:
    registry = atc_op_registry()
    found: list[Violation] = []
    for prefix, graph in _walk_graphs(model.graph):
        for index, node in enumerate(graph.node):
            domain = _domain(node.domain)
            if (domain, node.op_type) in _ALWAYS_ALLOWED:
                continue
            name = prefix + (node.name or f"{node.op_type}_{index}")
            version = opsets.get(domain)
            if version is None:
                found.append(Violation("op", name, f"{domain}::{node.op_type}: domain {domain!r} has no opset_import"))
                continue
            key = f"{domain}::{version}::{node.op_type}"
            if key not in registry:
                found.append(Violation("op", name, f"{key} is not registered in ATC's ONNX parser"))
            if node.op_type == "Cast":  # value_info is often absent: catch float64/complex at the cast
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to in _FLOAT64_COMPLEX:
                    found.append(Violation("dtype", name, f"Cast to {_dtype_name(to)}: no float64/complex on the NPU"))
    return found


def _check_ort_domains(model: ModelProto) -> list[Violation]:
    found: list[Violation] = []
    for prefix, graph in _walk_graphs(model.graph):
        for index, node in enumerate(graph.node):
            domain = _domain(node.domain)
            if domain not in ORT_DOMAINS:
                name = prefix + (node.name or f"{node.op_type}_{index}")
                found.append(Violation("op", name, f"{domain}::{node.op_type} is not an ONNX Runtime op"))
    return found


def _value_type(value: onnx.ValueInfoProto) -> int | None:
    if value.type.HasField("tensor_type"):
        return value.type.tensor_type.elem_type
    return None


def _check_dtypes(model: ModelProto, initializer_names: set[str]) -> list[Violation]:
    found: list[Violation] = []
    graph = model.graph
    boundary = [("input", v) for v in graph.input if v.name not in initializer_names]
    boundary += [("output", v) for v in graph.output]
    for kind, value in boundary:
        elem = _value_type(value)
        if elem in _BOUNDARY_BANNED:
            found.append(
                Violation(
                    "dtype",
                    value.name,
                    f"graph {kind} {value.name!r} is {_dtype_name(elem)}; use float32/float16/bfloat16, "
                    "int32 ids and additive float masks",
                )
            )
    for prefix, sub in _walk_graphs(graph):
        for tensor in sub.initializer:
            if tensor.data_type in _FLOAT64_COMPLEX:
                found.append(
                    Violation(
                        "dtype",
                        prefix + tensor.name,
                        f"initializer {tensor.name!r} is {_dtype_name(tensor.data_type)}; cast it to float32",
                    )
                )
        for value in sub.value_info:
            elem = _value_type(value)
            if elem in _FLOAT64_COMPLEX:
                found.append(
                    Violation(
                        "dtype",
                        prefix + value.name,
                        f"tensor {value.name!r} is {_dtype_name(elem)}; keep the graph in float32 or lower",
                    )
                )
    return found


def _check_shapes(model: ModelProto, initializer_names: set[str]) -> list[Violation]:
    found: list[Violation] = []
    graph = model.graph
    boundary = [("input", v) for v in graph.input if v.name not in initializer_names]
    boundary += [("output", v) for v in graph.output]
    for kind, value in boundary:
        if not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            if kind == "input":
                found.append(
                    Violation("shape", value.name, f"graph input {value.name!r} has no shape; export static shapes")
                )
            continue
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value == 0:
                found.append(Violation("shape", value.name, f"graph {kind} {value.name!r} dim {axis} is 0 (empty)"))
            elif kind == "input" and not (dim.HasField("dim_value") and dim.dim_value > 0):
                label = dim.dim_param or "?"
                found.append(
                    Violation(
                        "shape",
                        value.name,
                        f"graph input {value.name!r} dim {axis} is dynamic ({label}); "
                        "export static shapes for --input_shape",
                    )
                )
    return found


def _expected_nbytes(tensor: TensorProto) -> int | None:
    itemsize = _ITEMSIZE.get(tensor.data_type)
    if itemsize is None:
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * itemsize


def _check_external_data(model: ModelProto, base_dir: Path) -> list[Violation]:
    found: list[Violation] = []
    sizes: dict[Path, int | None] = {}
    for prefix, graph in _walk_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            name = prefix + tensor.name
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = info.get("location")
            if not location:
                found.append(Violation("external_data", name, "external initializer has no location"))
                continue
            file = base_dir / location
            if file not in sizes:
                sizes[file] = file.stat().st_size if file.is_file() and os.access(file, os.R_OK) else None
            size = sizes[file]
            if size is None:
                found.append(Violation("external_data", name, f"data file {location!r} is missing or unreadable"))
                continue
            try:
                offset = int(info.get("offset", "0"))
                length = int(info["length"]) if "length" in info else _expected_nbytes(tensor)
            except ValueError:
                found.append(Violation("external_data", name, f"bad offset/length in {info}"))
                continue
            end = offset + (length or 0)
            if offset < 0 or end > size:
                found.append(
                    Violation(
                        "external_data",
                        name,
                        f"bytes {offset}..{end} lie outside {location!r} ({size} bytes); the data file is truncated "
                        "or belongs to another export",
                    )
                )
    return found


def lint_onnx(
    path: str | os.PathLike[str], *, max_protobuf_bytes: int = 2**31 - 1, target: str = "atc"
) -> list[Violation]:
    """Check an .onnx file against what ATC accepts; an empty list means ATC should parse it.

    Rules: `opset`, `op`, `dtype`, `shape`, `size`, `external_data` (see the module docstring). Graph inputs
    that are also initializers count as constants, not runtime inputs. `target="ort"` lints an ONNX
    Runtime-only variant: the same rules, but ops are checked against ORT's domains, not ATC's registry.
    """
    if target not in ("atc", "ort"):
        raise ValueError(f"lint target must be atc or ort, not {target!r}")
    path = Path(path)
    model, early = _load(path, max_protobuf_bytes)
    if model is None:
        return early
    opsets = _opset_versions(model)
    initializer_names = {t.name for t in model.graph.initializer}
    violations = _check_opset(opsets)
    violations += _check_ops(model, opsets) if target == "atc" else _check_ort_domains(model)
    violations += _check_dtypes(model, initializer_names)
    violations += _check_shapes(model, initializer_names)
    proto_size = model.ByteSize()
    if proto_size > max_protobuf_bytes:
        violations.append(_size_violation(proto_size, max_protobuf_bytes))
    violations += _check_external_data(model, path.parent)
    return violations


def format_violations(violations: list[Violation]) -> str:
    """Plain-text table for the console and logs; a single "lint: clean" line when there is nothing."""
    if not violations:
        return "lint: clean"
    header = ("rule", "node", "detail")
    rows = [header, *((v.rule, v.node, v.detail) for v in violations)]
    rule_width = max(len(r[0]) for r in rows)
    node_width = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:<{rule_width}}  {r[1]:<{node_width}}  {r[2]}".rstrip() for r in rows]
    lines.insert(1, f"{'-' * rule_width}  {'-' * node_width}  {'-' * len('detail')}")
    count = len(violations)
    lines.append(f"lint: {count} violation{'s' if count != 1 else ''}")
    return "\n".join(lines)


def op_histogram(path: str | os.PathLike[str]) -> dict[str, int]:
    """op_type -> node count over the graph and its subgraphs, most frequent first (for compile reports)."""
    model, _ = _load(path, max_protobuf_bytes=2**63)
    assert model is not None
    counts: Counter[str] = Counter()
    for _, graph in _walk_graphs(model.graph):
        counts.update(node.op_type for node in graph.node)
    return dict(counts.most_common())
