"""Export: stage wrappers over ltx-core modules, export-time patchers, and the ONNX writer."""
