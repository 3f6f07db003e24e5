"""Export one component at one shape profile into a cached, manifest-described artifact folder.

The folder name is derived from the request key, so the same request finds the same folder
(cache hit) and a changed checkpoint, LoRA strength, dtype or shape lands in a new one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from ltx_ascend import dtypes
from ltx_ascend.atomic import disk_full_names_folder, file_lock, replace_dir
from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.components import request_for, source_paths
from ltx_ascend.errors import UserError
from ltx_ascend.export.items import ExportItem, ExportOptions, build_items
from ltx_ascend.export.npu_reference import ort_session
from ltx_ascend.export.onnx_writer import export_onnx
from ltx_ascend.graph_lint import lint_onnx, op_histogram
from ltx_ascend.metrics import TOLERANCES, Comparison, compare
from ltx_ascend.shapes import ShapeProfile
from ltx_ascend.store import (
    MANIFEST,
    Manifest,
    artifact_dir,
    ensure_weights,
    file_hashes,
    file_sizes,
    request_key,
    weight_refs,
    weights_bytes,
)


@dataclass
class GraphReport:
    """One exported graph, for the summary table."""

    name: str
    file: str
    seconds: float
    bytes: int
    ops: dict[str, int]
    comparisons: dict[str, Comparison] = field(default_factory=dict)


@dataclass
class ExportResult:
    component: str
    folder: Path
    cached: bool
    graphs: list[GraphReport]


def _graph_bytes(folder: Path, file: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(file + "*"))


def graph_outputs(path: Path) -> list[dict[str, Any]]:
    """Output names, static shapes and dtypes as the exported graph declares them."""
    model = onnx.load(str(path), load_external_data=False)
    return [
        {
            "name": o.name,
            "shape": [d.dim_value for d in o.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type).name,
        }
        for o in model.graph.output
    ]


def graph_inputs(path: Path) -> list[dict[str, Any]]:
    """Input names, static shapes and dtypes as the graph declares them (a split part's own boundary)."""
    model = onnx.load(str(path), load_external_data=False)
    return [
        {
            "name": i.name,
            "shape": [d.dim_value for d in i.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name,
        }
        for i in model.graph.input
    ]


def _check_graph(name: str, path: Path, lint_target: str) -> list[dict[str, Any]]:
    """The graph's outputs, after the lint and the static-shape check (failures are exporter bugs)."""
    violations = lint_onnx(path, target=lint_target)
    if violations:  # our exporter's fault, not the user's input: an internal error with a traceback
        raise RuntimeError(
            f"{name}: the exported graph fails the {lint_target.upper()} lint "
            f"({len(violations)} violations, first: "
            f"{violations[0].rule} at {violations[0].node}: {violations[0].detail}); this is a bug in the "
            "exporter, please report it with `ltx-compile --lint` output"
        )
    outputs = graph_outputs(path)
    dynamic = [o["name"] for o in outputs if not o["shape"] or 0 in o["shape"]]
    if dynamic:
        raise RuntimeError(
            f"{name}: outputs {dynamic} lost their static shape in export (an export patch is missing); "
            "this is an exporter bug, please report it"
        )
    return outputs


def verify_split(item: ExportItem, files: dict[str, Path], dtype: str) -> dict[str, Comparison]:
    """A split item's parts chained on ONNX Runtime against the eager reference of the whole item."""
    feeds = {n: item.sample[n].float() if dtype == "bfloat16" else item.sample[n] for n in item.input_names}
    outputs = item.split.run(files, feeds)
    references = item.reference(item.sample)
    return {
        name: compare(ref, out, peak=item.peak)
        for name, ref, out in zip(item.output_names, references, outputs, strict=True)
    }


def verify_item(item: ExportItem, path: Path, dtype: str) -> dict[str, Comparison]:
    """Run the exported graph on ONNX Runtime (CPU) on the sample feeds; compare with eager. Ascend's
    fused ops run as their reference decomposition (export/npu_reference.py): numerics checked on CPU."""
    session = ort_session(path)  # an npu-ops graph: Ascend's ops as their CPU reference
    feeds = {
        n: item.sample[n].float().numpy() if dtype == "bfloat16" else item.sample[n].numpy() for n in item.input_names
    }
    outputs = session.run(list(item.output_names), feeds)
    references = item.reference(item.sample)
    return {
        name: compare(ref, torch.from_numpy(out), peak=item.peak)
        for name, ref, out in zip(item.output_names, references, outputs, strict=True)
    }


def export_component(
    component: str,
    ckset: CheckpointSet | None,
    profile: ShapeProfile,
    *,
    options: ExportOptions | None = None,
    out: Path,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
    verify: bool = False,
) -> ExportResult:
    """Export (or find cached) every graph of `component` at `profile`.

    Builds take a lock per artifact folder, so concurrent runs wanting the same artifact take turns and
    the later one finds the earlier one's result. A build is written into a temporary folder beside
    the artifact and swapped in at the end: a failed `force` rebuild leaves the previous one in place."""
    options = options or ExportOptions()
    request = request_for(component, ckset, profile, dtype, options.variant, options.random)
    folder = artifact_dir(out, request)
    if not force and (hit := _cached_export(component, folder, request, out)) is not None:
        return hit
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot write artifacts under {folder.parent} ({exc.strerror}): pass a writable --out"
        ) from None
    with file_lock(Path(out) / ".locks" / f"{component}-{folder.parent.name}-{folder.name}.lock"):
        if not force and (hit := _cached_export(component, folder, request, out)) is not None:
            return hit  # another process built it while this one waited
        building = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", suffix=".partial", dir=folder.parent))
        try:
            with disk_full_names_folder(folder.parent, building, f"building {component}"):
                reports = _build(component, ckset, profile, dtype, options, verify, request, building, out, force)
            replace_dir(building, folder)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return ExportResult(component, folder, False, reports)


def _cached_export(component: str, folder: Path, request: dict[str, Any], out: Path) -> ExportResult | None:
    if not (folder / MANIFEST).is_file():
        return None
    manifest = Manifest.read(folder)
    if manifest.key != request_key(request) or not manifest.files_present(folder):
        return None
    if any(weights_bytes(out, key) is None for key, _ in weight_refs(manifest)):
        return None  # its content-addressed weights are gone: export again (they are written once more)
    graphs = [
        GraphReport(name, g["file"], 0.0, _graph_bytes(folder, g["file"]), g.get("ops", {}))
        for name, g in manifest.io["graphs"].items()
    ]
    return ExportResult(component, folder, True, graphs)


def _build(
    component: str,
    ckset: CheckpointSet | None,
    profile: ShapeProfile,
    dtype: torch.dtype,
    options: ExportOptions,
    verify: bool,
    request: dict[str, Any],
    building: Path,
    out: Path,
    force: bool = False,
) -> list[GraphReport]:
    variant = options.variant.for_component(component)
    if component != "dit":  # the DiT-only options change only the DiT graph
        options = ExportOptions(npu_ops=options.npu_ops, random_config=options.random_config, seed=options.seed)
    items = build_items(component, ckset, profile, dtype, options)
    graphs_io: dict[str, Any] = {}
    reports = []
    for item in items:
        file = f"{item.name}.onnx"
        start = time.perf_counter()
        path = export_onnx(
            item.module,
            item.args(),
            item.input_names,
            item.output_names,
            building / file,
            npu_ops=options.npu_ops,
            ort_fused=options.ort_fused,
            opset=request["opset"],
        )
        parts = item.split.write(path) if item.split else [(item.name, path)]
        seconds = (time.perf_counter() - start) / len(parts)
        item_reports = []
        for k, (name, part) in enumerate(parts):
            outputs = _check_graph(name, part, "ort" if variant.ort_only else "atc")
            ops = op_histogram(part)
            report = GraphReport(name, part.name, seconds, _graph_bytes(building, part.name), ops)
            item_reports.append(report)
            first = k == 0  # the item's extra files (block weights) are listed once, with its first part
            extra_files, weights = [], None
            if first and item.write_extra and item.weights_material is not None:
                key, files, _ = ensure_weights(out, item.weights_material, item.write_extra, force=force)
                weights = {"key": key, "files": files}
            elif first and item.write_extra:
                extra_files = item.write_extra(building)
            graphs_io[name] = {
                "file": part.name,
                "variant": item.variant if not item.split else name.removeprefix(f"{component}-"),
                "inputs": item.io_spec()["inputs"] if not item.split else graph_inputs(part),
                "outputs": outputs,
                "notes": item.notes,
                "ops": ops,
                "extra_files": extra_files,
            }
            if weights is not None:  # by content key: <out>/weights/<key>/, shared with every artifact using them
                graphs_io[name]["weights"] = weights
        if verify:
            if item.split:
                comparisons = verify_split(item, dict(parts), dtypes.name(dtype))
            else:
                comparisons = verify_item(item, path, dtypes.name(dtype))
            item_reports[-1].comparisons = comparisons
        reports += item_reports
    names = [p.name for p in building.iterdir()]
    manifest = Manifest(
        kind="onnx",
        component=component,
        variant=variant.name,
        request=request,
        io={"graphs": graphs_io},
        files=file_hashes(building, names),
        sizes=file_sizes(building, names),
        # Not part of the key: the full profile it was traced at (ltx-verify rebuilds its items there),
        # and where its sources were read from, a hint ltx-verify re-checks by content.
        extra={"profile": profile.to_dict(), "source_paths": source_paths(component, ckset)},
    )
    manifest.write(building)
    return reports


def passes_tolerance(report: GraphReport, dtype: str) -> bool:
    return all(c.passes(TOLERANCES[dtype]) for c in report.comparisons.values())
