"""Audio decoder and vocoder export: graph forms equal ltx-core, ONNX on ORT matches eager, shapes static."""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F

from ltx_ascend.export import audio
from ltx_ascend.graph_lint import op_histogram
from ltx_ascend.shapes import shape_profile
from tests.parity import export_and_compare

PROFILE = shape_profile("9x128x192")  # one-stage, full size: 9 audio latent frames


def _declared_output_shapes(path) -> list[list[int | str]]:
    model = onnx.load(str(path), load_external_data=False)
    return [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output]


def test_audio_decoder_on_ort_matches_eager(tiny, tmp_path):
    (item,) = audio.build_audio_decoder_items(tiny.checkpoint_set(), PROFILE, torch.float32)
    latent = item.sample["audio_latent"]
    assert tuple(latent.shape) == PROFILE.audio_latent_shape == (1, 8, 9, 16)
    (reference,) = item.reference(item.sample)
    with torch.no_grad():
        (form,) = item.module(latent)
    assert torch.equal(form, reference)  # the export forms are exact, not approximations
    assert F.pad is audio._torch_pad  # and they are gone after the forward
    # causal decode: 4 mel frames per latent frame but the first; stereo, 64 mel bins
    assert tuple(reference.shape) == (1, 2, 4 * 9 - 3, 64)

    export_and_compare(item, tmp_path)
    path = tmp_path / f"{item.name}.onnx"
    assert _declared_output_shapes(path) == [list(reference.shape)]  # static, not Sliceout_dim_*
    ops = op_histogram(path)
    assert "Shape" not in ops and "ConstantOfShape" not in ops


def test_vocoder_float32_on_ort_matches_eager(tiny, tmp_path):
    ckset = tiny.checkpoint_set()
    (decoder_item,) = audio.build_audio_decoder_items(ckset, PROFILE, torch.float32)
    (item,) = audio.build_vocoder_items(ckset, PROFILE, torch.bfloat16)
    # Float32 whatever the pipeline dtype, and the mel exactly as decode_audio hands it over.
    assert item.notes["dtype"] == "float32" and item.notes["requested_dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in item.module.parameters())
    (decoded,) = decoder_item.reference(decoder_item.sample)
    assert item.sample["mel"].dtype == torch.float32 and torch.equal(item.sample["mel"], decoded)
    assert item.notes["bandwidth_extension"] and item.peak == 2.0

    # The tiny set's random weights push the BWE sum far past the final clamp (~95% of samples at
    # +-1), which would hide any error upstream; scale both generators' last convs down so the
    # comparison sees the signal path (the module and the reference share these weights).
    vocoder = item.module.vocoder
    with torch.no_grad():
        vocoder.vocoder.conv_post.weight.mul_(0.01)
        vocoder.bwe_generator.conv_post.weight.mul_(0.01)
    (reference,) = item.reference(item.sample)
    assert (reference.abs() >= 1).float().mean() < 0.05
    with torch.no_grad():
        (form,) = item.module(item.sample["mel"])
    assert torch.equal(form, reference)
    # 160 samples per mel frame at 16 kHz, x3 to 48 kHz, stereo
    assert tuple(reference.shape) == (1, 2, 33 * 160 * 3)

    (result,) = export_and_compare(item, tmp_path)
    assert result.psnr_db is not None and result.psnr_db > 60
    path = tmp_path / f"{item.name}.onnx"
    assert _declared_output_shapes(path) == [list(reference.shape)]
    ops = op_histogram(path)
    # the unused phase (atan2) and energy (norm) are pruned; no runtime shape arithmetic is left
    assert not {"Atan", "Atan2", "ReduceL2", "Shape", "Where", "Expand"} & set(ops)
    model = onnx.load(str(path))
    pad_modes = [a.s.decode() for n in model.graph.node if n.op_type == "Pad" for a in n.attribute if a.name == "mode"]
    assert set(pad_modes) <= {"constant"}
    assert any(
        a.name == "group" and a.i > 1 for n in model.graph.node if n.op_type == "ConvTranspose" for a in n.attribute
    )
