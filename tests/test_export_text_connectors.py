"""Text connectors export: the static register replacement equals ltx-core's, and the ONNX graph on
ORT matches eager ltx-core for the sample mask and for other prompt lengths (one graph, any length)."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from ltx_core.text_encoders.gemma.embeddings_processor import convert_to_additive_mask

from ltx_ascend.checkpoints.loader import load_component
from ltx_ascend.errors import UserError
from ltx_ascend.export import text_connectors as tc
from ltx_ascend.metrics import TOLERANCES, compare
from ltx_ascend.shapes import shape_profile
from tests.parity import export_and_compare

TOKENS = 128  # a multiple of the connectors' 128 learnable registers, small enough for seconds
PROFILE = shape_profile("9x128x192", text_tokens=TOKENS)


@pytest.mark.parametrize("valid", [TOKENS, TOKENS // 2, 37, 1, 0])
def test_static_register_replacement_equals_ltx_core(tiny, valid):
    """Rotate-and-zero Gather == ltx-core's boolean-index gather + zero pad, bit for bit, per connector."""
    processor = load_component("text_connectors", tiny.checkpoint_set())
    for connector in (processor.video_connector, processor.audio_connector):
        hidden = torch.randn(1, TOKENS, connector.inner_dim, generator=torch.Generator().manual_seed(valid))
        additive = convert_to_additive_mask(tc.left_padding_mask(TOKENS, [valid]).to(torch.int64), hidden.dtype)
        assert torch.isfinite(additive).all()
        ref_hidden, ref_mask = connector._replace_padded_with_learnable_registers(hidden, additive)
        out_hidden, out_mask = tc.replace_padded_with_registers_static(connector, hidden, additive)
        assert torch.equal(ref_hidden, out_hidden)
        assert torch.equal(ref_mask, out_mask)
        # the valid tokens lead, registers follow
        assert torch.equal(out_hidden[0, :valid], hidden[0, TOKENS - valid :])


def test_graph_form_equals_ltx_core_exactly(tiny):
    """Patched graph form, batched, vs plain ltx-core one prompt at a time, different lengths per row."""
    profile = shape_profile("9x128x192", text_tokens=TOKENS, batch=4)
    (item,) = tc.build_items(tiny.checkpoint_set(), profile, torch.float32)
    assert item.notes["sample_valid_tokens"] == [64, 28, 127, 1]
    with torch.no_grad():
        out = item.module(*item.args())
    for ref, got in zip(item.reference(item.sample), out, strict=True):
        assert torch.equal(ref, got)
    assert not torch.allclose(out[0][0], out[0][1])


def test_text_connectors_on_ort_match_eager_for_every_prompt_length(tiny, tmp_path):
    (item,) = tc.build_items(tiny.checkpoint_set(), PROFILE, torch.float32)
    assert item.sample["attention_mask"].dtype == torch.float32
    assert item.sample["attention_mask"].sum() == TOKENS // 2
    export_and_compare(item, tmp_path)

    session = ort.InferenceSession(str(tmp_path / f"{item.name}.onnx"), providers=["CPUExecutionProvider"])
    hidden = item.sample["hidden_states"]
    videos = []
    for valid in (1, 37, TOKENS):
        feeds = {"hidden_states": hidden, "attention_mask": tc.left_padding_mask(TOKENS, [valid])}
        outputs = session.run(list(item.output_names), {n: t.numpy() for n, t in feeds.items()})
        for name, ref, out in zip(item.output_names, item.reference(feeds), outputs, strict=True):
            result = compare(ref, torch.from_numpy(out))
            assert result.passes(TOLERANCES["float32"]), f"{name} with {valid} valid tokens: {result}"
        videos.append(torch.from_numpy(outputs[0]))
    assert not torch.allclose(videos[0], videos[1]) and not torch.allclose(videos[1], videos[2])


def test_text_tokens_must_be_a_multiple_of_the_registers(tiny):
    with pytest.raises(UserError, match="multiple of their 128 learnable registers"):
        tc.build_items(tiny.checkpoint_set(), shape_profile("9x128x192", text_tokens=96), torch.float32)
