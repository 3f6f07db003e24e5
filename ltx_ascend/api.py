"""The resident Python API: load once, generate many.

    from ltx_ascend import Engine, GenerationRequest, RunSettings

    engine = Engine(RunSettings())  # no checkpoint: the tiny set under artifacts/tiny
    result = engine.generate(GenerationRequest(prompt="a red fox in snow", num_inference_steps=2))
    result.write_mp4("fox.mp4")

`ltx-run` is a thin CLI over these names (ltx_ascend/tools/run.py); the service codes against them.
"""

from __future__ import annotations

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine.context import ImageInput
from ltx_ascend.engine.request import GenerationRequest, Progress
from ltx_ascend.engine.resident import Engine, Prepared, Result
from ltx_ascend.engine.settings import RunSettings
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import Cancelled, UserError

__all__ = [
    "Cancelled",
    "Engine",
    "GenerationRequest",
    "ImageInput",
    "LoraSpec",
    "Prepared",
    "Progress",
    "Result",
    "RunSettings",
    "Timings",
    "UserError",
]
