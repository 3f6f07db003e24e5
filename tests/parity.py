"""Shared parity check: export an item, lint it for ATC, run it on ONNX Runtime, compare with eager."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch

from ltx_ascend.export.items import ExportItem
from ltx_ascend.export.onnx_writer import export_onnx
from ltx_ascend.graph_lint import format_violations, lint_onnx
from ltx_ascend.metrics import TOLERANCES, compare


def export_and_compare(item: ExportItem, out_dir: Path, dtype: str = "float32") -> list:
    path = export_onnx(item.module, item.args(), item.input_names, item.output_names, out_dir / f"{item.name}.onnx")
    violations = lint_onnx(path)
    assert not violations, format_violations(violations)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(item.input_names), "an input was pruned from the graph"
    outputs = session.run(list(item.output_names), {n: item.sample[n].numpy() for n in item.input_names})
    references = item.reference(item.sample)
    results = []
    for name, ref, out in zip(item.output_names, references, outputs, strict=True):
        assert tuple(ref.shape) == out.shape, name
        result = compare(ref, torch.from_numpy(out), peak=item.peak)
        assert result.passes(TOLERANCES[dtype]), f"{item.name}.{name}: {result}"
        results.append(result)
    return results
