"""ltx-ascend: LTX-2.3 from offline-compiled graphs on Ascend NPUs, ONNX Runtime, or eager PyTorch."""

__version__ = "0.1.0"
