"""DiT export: graph form equals ltx-core, and the ONNX graph on ORT matches eager within tolerance."""

from __future__ import annotations

import torch

from ltx_ascend.checkpoints.loader import LoraSpec, load_component
from ltx_ascend.export import dit, dit_layouts
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.shapes import shape_profile
from tests.parity import export_and_compare

PROFILE = shape_profile("9x128x192", stage=1, text_tokens=64)


def test_graph_form_equals_ltx_core_exactly(tiny):
    """Host RoPE + float perturbation masks reproduce ltx-core's own forward bit for bit."""
    model = load_component("dit", tiny.checkpoint_set())
    passes = dit.guidance_passes([1])
    feeds, video_pos, audio_pos = dit.sample_feeds(model, PROFILE, passes)
    with torch.no_grad():
        ref = dit.eager_dit(model, feeds, video_pos, audio_pos, passes)
        out = dit.DiTGraph(model)(*feeds.values())
    for r, o in zip(ref, out, strict=True):
        assert torch.equal(r, o)
    # the four passes are genuinely different computations
    same_latent = {
        k: (v[:1].expand_as(v).contiguous() if k.endswith(("latent", "context")) else v) for k, v in feeds.items()
    }
    with torch.no_grad():
        video, _ = dit.DiTGraph(model)(*same_latent.values())
    assert all(not torch.allclose(video[0], video[i]) for i in (2, 3))


def test_dit_all_guidance_passes_on_ort_match_eager(tiny, tmp_path):
    items = dit_layouts.build_items(
        tiny.checkpoint_set(), shape_profile("9x128x192", stage=1, batch=4), torch.float32, ExportOptions()
    )
    (item,) = items
    assert item.notes["guidance_passes"] == 4
    assert item.sample["skip_video_self_attn"].sum() > 0 and item.sample["skip_a2v_cross_attn"].sum() > 0
    export_and_compare(item, tmp_path)


def test_stage2_dit_with_distilled_lora_fused(tiny, tmp_path):
    ckset = tiny.checkpoint_set(LoraSpec(tiny.distilled_lora, 0.8))
    (item,) = dit_layouts.build_items(ckset, shape_profile("9x128x192", stage=2), torch.float32, ExportOptions())
    export_and_compare(item, tmp_path)


def test_npu_ops_graph_uses_ascend_fused_kernels(tiny, tmp_path):
    """--npu-ops: RMSNorm as npu::NPURmsNorm and mask-free attention as npu::NPUPromptFlashAttention
    (BNSD), both registered in ATC's ONNX parser; ATC-only (ONNX Runtime has no npu domain)."""
    import onnx

    from ltx_ascend.export.onnx_writer import export_onnx
    from ltx_ascend.graph_lint import lint_onnx, op_histogram

    (item,) = dit_layouts.build_items(tiny.checkpoint_set(), PROFILE, torch.float32, ExportOptions())
    path = export_onnx(item.module, item.args(), item.input_names, item.output_names, tmp_path / "d.onnx", npu_ops=True)
    assert lint_onnx(path) == []
    ops = op_histogram(path)
    assert ops["NPUPromptFlashAttention"] == 12 and ops["NPURmsNorm"] > 0
    assert "Softmax" not in ops and "ReduceMean" not in ops
    model = onnx.load(str(path))
    assert all(d.dim_value > 0 for o in model.graph.output for d in o.type.tensor_type.shape.dim)
    attention = next(n for n in model.graph.node if n.op_type == "NPUPromptFlashAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attention.attribute}
    assert attention.domain == "npu" and attrs["input_layout"] == b"BNSD" and attrs["num_heads"] == 2
