"""The shape profile: the one function every stage derives sizes from."""

from __future__ import annotations

import re

import pytest

from ltx_ascend.errors import UserError
from ltx_ascend.shapes import parse_shape, shape_profile


def test_user_shape_matches_the_documented_token_counts():
    stage1 = shape_profile("41x1024x1536", stage=1)
    stage2 = shape_profile("41x1024x1536", stage=2)
    assert (stage1.height, stage1.width) == (512, 768)
    assert stage1.latent_frames == stage2.latent_frames == 6
    assert stage1.video_tokens == 2304
    assert stage2.video_tokens == 9216
    assert stage1.audio_tokens == stage2.audio_tokens == 43
    assert stage1.video_latent_shape == (1, 128, 6, 16, 24)
    assert stage2.audio_latent_shape == (1, 8, 43, 16)


def test_conditioning_tokens_and_batch():
    p = shape_profile((9, 128, 192), batch=4, conditioning_tokens=24)
    assert p.video_tokens == p.video_latent_tokens + 24
    assert p.batch == 4 and p.key == "9x128x192-b4-c24"


@pytest.mark.parametrize(
    "shape,stage,needle",
    [
        ("40x512x768", None, "8k+1"),
        ("41x500x768", None, "multiple of 32"),
        ("41x544x768", 1, "multiple of 64"),
        ("41-512-768", None, "FRAMESxHEIGHTxWIDTH"),
        ("41x512x768", 3, "--stage"),
    ],
)
def test_bad_shapes_are_one_line_errors(shape, stage, needle):
    with pytest.raises(UserError, match=re.escape(needle)) as info:
        shape_profile(shape, stage=stage)
    assert "\n" not in str(info.value)


def test_parse_shape():
    assert parse_shape(" 121x704x1216 ") == (121, 704, 1216)
