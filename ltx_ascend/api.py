"""The resident Python API: load once, generate many.

    from ltx_ascend import Engine, GenerationRequest, RunSettings

    engine = Engine(RunSettings())  # no checkpoint: the tiny set under artifacts/tiny
    result = engine.generate(GenerationRequest(prompt="a red fox in snow", num_inference_steps=2))
    result.write_mp4("fox.mp4")

`ltx-run` is a thin CLI over these names (ltx_ascend/pipelines/cli.py); the service codes against them.
"""

from __future__ import annotations

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.errors import Cancelled, UserError
from ltx_ascend.pipelines.context import ImageInput
from ltx_ascend.pipelines.engine import Engine, Prepared, Result
from ltx_ascend.pipelines.request import GenerationRequest, Progress
from ltx_ascend.pipelines.settings import RunSettings
from ltx_ascend.pipelines.timing import Timings

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
