"""Compile: ATC lint, CANN ATC command lines and runs, ONNX Runtime optimisation, manifests."""
