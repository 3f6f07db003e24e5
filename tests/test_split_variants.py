"""The split block layout in every graph variant (export/dit_split.py): the segments keep the
variant's fused and quantized ops (ORT's fused attention and RMSNorm, W8A8's int8 matmuls, Ascend's
fused kernels), pass the lint of the runtime they are for, and chained with the device's attention
core between them (U = 1) equal the variant's own unsplit block graph within float32 rounding.
npu-ops graphs run on the om stand-in (tests/fake_cann.py), Ascend's ops as their reference."""

from __future__ import annotations

import pytest
import torch

from ltx_ascend.checkpoints.loader import CheckpointSet, read_model_config
from ltx_ascend.compile.compiler import compile_om
from ltx_ascend.engine.dit_runner import DiTRunner
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.graph_lint import lint_onnx, op_histogram
from ltx_ascend.metrics import TOLERANCES
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import Variant
from tests import fake_cann
from tests.test_dit_split import MAX_ABS_ERROR, SHAPE, _error, _step_inputs, _Swapped

SOC = "Ascend910B4"
# The ops each variant's segments must still hold (counted over the three segments of one block).
VARIANT_OPS = {
    "ort-fused": {"SimplifiedLayerNormalization", "MultiHeadAttention"},
    "w8a8": {"MatMulInteger"},
    "ort-fused+w8a8": {"SimplifiedLayerNormalization", "MultiHeadAttention", "MatMulInteger"},
    "npu-ops": {"NPURmsNorm", "NPUPromptFlashAttention"},
    "npu-ops+w8a8": {"NPURmsNorm", "NPUPromptFlashAttention", "NPUDynamicQuant", "QuantBatchMatMul"},
}


def _runner(tiny, out, variant: Variant, layout: str) -> tuple[DiTRunner, list]:
    ckset = CheckpointSet(tiny.checkpoint)
    profile = shape_profile(SHAPE, stage=1, batch=2)
    options = ExportOptions(**{**variant.__dict__, "dit_layout": layout})
    result = export_component("dit", ckset, profile, options=options, out=out, verify=True)
    backend = "om" if variant.npu_ops else "onnx"
    if backend == "om":
        compile_om(result.folder, SOC, None, force=False, dry_run=False)
    from ltx_ascend.store import resolve_folder, weight_files

    resolution = resolve_folder(result.folder, backend, soc=SOC)
    assert resolution.variant == variant.label
    sessions = open_component(resolution, fallback="none", threads=1)
    weights = weight_files(resolution.folder)  # content-addressed: <out>/weights/<key>/
    runner = DiTRunner(read_model_config(ckset.checkpoint), sessions, block_weights=weights)
    return runner, [(g, result.folder / g.file) for g in result.graphs]


# CI runs the two combined variants (each holds its single variants' ops); `-m slow` runs every one.
COMBINED = ("ort-fused+w8a8", "npu-ops+w8a8")


@pytest.mark.parametrize(
    "label", [v if v in COMBINED else pytest.param(v, marks=pytest.mark.slow) for v in VARIANT_OPS]
)
def test_split_variant_equals_its_unsplit_variant(tiny, tmp_path, monkeypatch, label):
    variant = Variant.parse(label)
    if variant.npu_ops:
        fake = fake_cann.install(monkeypatch, tmp_path / "bin", SOC)
    blocks, _ = _runner(tiny, tmp_path, variant, "blocks")
    split, graphs = _runner(tiny, tmp_path, variant, "split")
    assert blocks.layout == "blocks" and split.layout == "split" and len(split.segments) == 3
    target = "ort" if variant.ort_only else "atc"
    ops: dict[str, int] = {}
    for report, path in graphs:
        # the exporter's own check: every graph (segments chained with plain cores) against ltx-core
        assert all(c.passes(TOLERANCES["float32"]) for c in report.comparisons.values()), report.comparisons
        assert lint_onnx(path, target=target) == [], (report.name, target)
        if report.name.startswith("dit-segment"):
            for op, n in op_histogram(path).items():
                ops[op] = ops.get(op, 0) + n
    assert VARIANT_OPS[label] <= set(ops), sorted(ops)
    if variant.quantization:  # every linear of the block quantized: no float matmul against a weight left
        assert "Gemm" not in ops
    video, audio, passes = _step_inputs(blocks)
    reference = blocks(video, audio, passes)
    error = _error(split(video, audio, passes), reference)
    print(f"{label}: split (U=1) vs its block graph: max abs error {error:.2e}")
    assert error <= MAX_ABS_ERROR
    # a boundary that hands on the wrong tensor shows here too
    good = split.segments[0]
    split.segments[0] = _Swapped(good, "attn1.q", "attn1.k")
    broken = _error(split(video, audio, passes), reference)
    split.segments[0] = good
    assert broken > 1e3 * MAX_ABS_ERROR, broken
    if variant.npu_ops:
        assert all(s.backend == "om" for s in split.segments) and not fake.violations
    for runner in (blocks, split):
        for session in runner.sessions.values():
            session.close()


class _Counted:
    """A session that counts its calls."""

    def __init__(self, session) -> None:
        self.session, self.calls = session, 0
        self.input_names, self.output_names = session.input_names, session.output_names
        self.inputs, self.outputs = session.inputs, session.outputs

    def run(self, feeds):
        self.calls += 1
        return self.session.run(feeds)

    def close(self) -> None:
        self.session.close()


@pytest.mark.parametrize(
    ("label", "layout"),
    [
        ("portable", "blocks"),
        ("w8a8", "blocks"),
        ("npu-ops", "blocks"),
        ("ort-fused+w8a8", "split"),
        ("npu-ops+w8a8", "split"),
    ],
)
def test_per_sample_adaln_graphs_in_every_variant(tiny, tmp_path, monkeypatch, label, layout):
    """Every block layout carries the per-sample AdaLN input graph and block graph (segments when
    split). With one timestep per pass the runner runs them, never the per-token input graph, and
    gives the per-token graphs' X0 within float32 rounding; per-token timesteps take the per-token ones."""
    import dataclasses

    from ltx_ascend.engine.dit_runner import SAMPLE_ADALN_GRAPH, SAMPLE_INPUT_GRAPH
    from ltx_ascend.export import dit_blocks

    variant = Variant.parse(label)
    if variant.npu_ops:
        fake_cann.install(monkeypatch, tmp_path / "bin", SOC)
    lean, _ = _runner(tiny, tmp_path, variant, layout)
    sample_graphs = {SAMPLE_INPUT_GRAPH, SAMPLE_ADALN_GRAPH} | {
        n for n in lean.sessions if n.startswith(f"dit-{dit_blocks.SAMPLE_ADALN}-segment")
    }
    assert SAMPLE_INPUT_GRAPH in lean.sessions and (
        SAMPLE_ADALN_GRAPH in lean.sessions or len(lean.sample_segments) == 3
    )
    adaln = next(s for s in lean.sessions[SAMPLE_INPUT_GRAPH].outputs if s.name == "video_adaln")
    assert adaln.shape[1] == 1  # [passes, 1, 9 x dim]: the per-token table is never computed
    per_token = DiTRunner(
        read_model_config(tiny.checkpoint),
        {k: v for k, v in lean.sessions.items() if k not in sample_graphs},
        block_weights=lean.block_weights,
    )
    assert not per_token.per_sample_blocks
    counted = lean.sessions["dit-input"] = _Counted(lean.sessions["dit-input"])
    video, audio, passes = _step_inputs(lean)
    shared = {m: dataclasses.replace(x, timesteps=torch.full_like(x.timesteps, 0.7)) for m, x in
              (("video", video), ("audio", audio))}  # fmt: skip
    got, want = lean(shared["video"], shared["audio"], passes), per_token(shared["video"], shared["audio"], passes)
    error = _error(got, want)
    print(f"{label} {layout}: per-sample AdaLN graphs vs per-token: max abs error {error:.2e}")
    assert counted.calls == 0 and error <= MAX_ABS_ERROR
    # another timestep's row (0.3 in place of 0.7) is visible: the comparison can fail
    other = dataclasses.replace(shared["video"], timesteps=torch.full_like(video.timesteps, 0.3))
    assert _error(lean(other, shared["audio"], passes), want) > 1e3 * MAX_ABS_ERROR
    # per-token timesteps (conditioned tokens): the per-token input graph, and the per-token X0
    assert _error(lean(video, audio, passes), per_token(video, audio, passes)) <= MAX_ABS_ERROR
    assert counted.calls == 1
    for session in lean.sessions.values():
        session.close()
