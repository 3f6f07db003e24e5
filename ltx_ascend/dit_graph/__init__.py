"""The DiT's graph contract: the tensor names, graph modules and segment names the exported DiT graphs
are traced with and the runner feeds them by.

Export traces these graphs; the runner (engine/dit_runner.py) feeds them on hosts that run artifacts
without the tracing machinery. So neither side owns the contract: both import it from here, and it
imports no stage (tests/test_layout.py).

  whole.py     the whole DiT as one graph: its named inputs, host RoPE, float skip masks
  blocks.py    the block layout: the input, block (weights as inputs) and output graphs
  segments.py  the split layout: token shards, the segments' names, the cores run between them
"""
