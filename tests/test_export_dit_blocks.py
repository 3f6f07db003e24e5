"""The DiT as input graph + one shared block graph (weights as inputs) + output graph."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from ltx_ascend.checkpoints.loader import LoraSpec, load_component
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.export import dit, dit_blocks
from ltx_ascend.export.items import ExportOptions, build_items
from ltx_ascend.export.onnx_writer import export_onnx
from ltx_ascend.graph_lint import format_violations, lint_onnx
from ltx_ascend.metrics import TOLERANCES, compare
from ltx_ascend.shapes import shape_profile
from tests.parity import export_and_compare


def _session(item, folder):
    path = export_onnx(item.module, item.args(), item.input_names, item.output_names, folder / f"{item.name}.onnx")
    violations = lint_onnx(path)
    assert not violations, format_violations(violations)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, feeds):
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {i.name: feeds[i.name].numpy() for i in session.get_inputs()})
    return dict(zip(names, (torch.from_numpy(o) for o in outs), strict=True))


def test_block_chain_on_ort_equals_the_whole_model(tiny, tmp_path):
    """input graph -> every block through ONE block graph with per-block weight files -> output graph."""
    ckset = tiny.checkpoint_set(LoraSpec(tiny.distilled_lora, 0.8))
    profile = shape_profile("9x128x192", stage=2, batch=4)
    items = {
        i.variant: i for i in build_items("dit", ckset, profile, torch.float32, ExportOptions(dit_layout="blocks"))
    }
    assert set(items) == {"input", "block", "output", "input-sample-adaln", "block-sample-adaln"}
    for item in items.values():  # each graph alone matches ltx-core
        export_and_compare(item, tmp_path)
    names = items["block"].write_extra(tmp_path)
    assert names == ["block_00.safetensors", "block_01.safetensors"]

    # The reference: the whole LoRA-fused model, all four guidance passes in one batch.
    model = load_component("dit", ckset)
    passes = dit.sample_passes(4, len(model.transformer_blocks))
    feeds, video_pos, audio_pos = dit.sample_feeds(model, shape_profile("9x128x192", stage=2), passes)
    with torch.no_grad():
        ref_video, ref_audio = dit.eager_dit(model, feeds, video_pos, audio_pos, passes)

    sessions = {v: _session(items[v], tmp_path) for v in items}
    acts = _run(sessions["input"], feeds)
    for name in names:
        i = dit_blocks.block_index(name)
        weights = load_file(str(tmp_path / name))
        block_in = {**acts, **feeds, **dit_blocks.block_skip_columns(feeds, i)}
        block_in |= {dit_blocks.WEIGHT_PREFIX + k: v for k, v in weights.items()}
        out = _run(sessions["block"], block_in)
        acts["video_x"], acts["audio_x"] = out["video_x_out"], out["audio_x_out"]
    final = _run(sessions["output"], {**acts, **feeds})
    for ref, got in ((ref_video, final["video_denoised"]), (ref_audio, final["audio_denoised"])):
        result = compare(ref, got)
        assert result.passes(TOLERANCES["float32"]), result


@pytest.mark.real_width
def test_22b_block_at_real_width_reduced_tokens(tmp_path):
    """One LTX-2.3 22B block (4096 wide, 32 heads, 386.7M weights as inputs) at 288 video tokens."""
    config = config_22b()
    profile = shape_profile("17x512x768", stage=1, text_tokens=128)
    assert profile.video_tokens == 288
    items = dit_blocks.build_block_items(None, config, profile, torch.float32)
    block = next(i for i in items if i.variant == "block")
    weights = sum(t.numel() for n, t in block.sample.items() if n.startswith(dit_blocks.WEIGHT_PREFIX))
    assert abs(weights - 386.7e6) / 386.7e6 < 0.001
    export_and_compare(block, tmp_path)
    onnx_bytes = sum(p.stat().st_size for p in tmp_path.glob("dit-block.onnx*"))
    assert onnx_bytes < 10 * 2**20  # weights are inputs: the graph itself is small
