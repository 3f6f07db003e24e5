"""ltx-ascend: LTX-2.3 from offline-compiled graphs on Ascend NPUs, ONNX Runtime, or eager PyTorch.

The Python API (`Engine`, `RunSettings`, `GenerationRequest`, ...) is `ltx_ascend.api`, re-exported
here on first use (so importing a light module such as `ltx_ascend.errors` does not load torch).
"""

__version__ = "0.1.0"

_API = (
    "Engine",
    "RunSettings",
    "GenerationRequest",
    "ImageInput",
    "Result",
    "Progress",
    "Cancelled",
    "UserError",
    "LoraSpec",
    "Timings",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from ltx_ascend import api

        return getattr(api, name)
    raise AttributeError(f"module 'ltx_ascend' has no attribute {name!r}")
