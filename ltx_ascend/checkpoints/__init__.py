"""Checkpoints: the LTX-2.3 checkpoint set, loading through ltx-core's builders, and the tiny synthetic set."""
