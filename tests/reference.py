"""Test-only shims that let Lightricks' ltx-pipelines 1.0.0 run on CPU over the tiny set.

They never belong in the product: ltx-pipelines calls `torch.cuda.synchronize` / `empty_cache`
directly and builds Gemma from ltx-core's hard-coded 12B config. Here the first two become
no-ops and the config becomes the tiny Gemma root's, for the duration of a test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ltx_core.text_encoders.gemma.encoders import encoder_configurator
from transformers import Gemma3Config


@contextlib.contextmanager
def reference_shims(gemma_root: Path) -> Iterator[None]:
    gemma = Gemma3Config.from_dict(json.loads((Path(gemma_root) / "config.json").read_text()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        mp.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
        mp.setattr(encoder_configurator, "GEMMA3_CONFIG_FOR_LTX", gemma)
        yield
