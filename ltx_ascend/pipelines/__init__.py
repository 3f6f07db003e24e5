"""Pipelines: the eight LTX-2.3 sampling loops driving compiled graphs, conditioning and media I/O."""
