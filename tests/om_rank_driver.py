"""Run under torchrun (gloo, 2 ranks) by tests/test_parallel_om.py: one rank of an om run on a host
with two cards, the stand-in pyACL (tests/fake_cann.py) in place of CANN.

argv: ARTIFACTS CHECKPOINT SHAPE. Each rank opens the vocoder's om graph through `ModelStack` (the
path every om component takes), runs it once, and checks that its graph was loaded on its own card
(LOCAL_RANK) and that no memory of one card was used under another. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from tests.fake_cann import FakeAcl

fake = FakeAcl(devices=2)
sys.modules["acl"] = fake.module  # before the runtime imports pyACL
sys.modules["torch_npu"] = None  # type: ignore[assignment]  # no torch_npu: an om run on a CPU-side torch

from ltx_ascend.checkpoints.loader import CheckpointSet  # noqa: E402
from ltx_ascend.engine.parallel import Parallel  # noqa: E402
from ltx_ascend.engine.stack import BackendChoice, ModelStack  # noqa: E402
from ltx_ascend.runtime import device as dev  # noqa: E402
from ltx_ascend.runtime import distributed as D  # noqa: E402
from ltx_ascend.shapes import shape_profile  # noqa: E402


def main(artifacts: str, checkpoint: str, shape: str) -> int:
    local_rank = int(os.environ["LOCAL_RANK"])
    world = D.init_world(D.Layout(cfg=2), torch.device("cpu"))
    stack = ModelStack(
        ckset=CheckpointSet(Path(checkpoint)),
        policy=dev.policy_for("cpu", "float32"),
        backends=BackendChoice.parse("om"),
        artifacts=Path(artifacts),
        fallback="none",
        soc="Ascend910B4",
        parallel=Parallel(world),
        log=lambda _: None,
    )
    sessions = stack._sessions("vocoder", stack.ckset, shape_profile(shape))
    assert sessions is not None, "the om vocoder was not found"
    (session,) = sessions.values()
    feeds = {spec.name: torch.zeros(spec.shape, dtype=torch.float32) for spec in session.inputs}
    out = session.run(feeds)
    session.close()
    loaded = fake.model_devices()
    print(json.dumps({"rank": world.rank, "local_rank": local_rank, "loaded_on": loaded,
                      "violations": fake.violations, "outputs": sorted(out)}), flush=True)  # fmt: skip
    world.barrier()
    assert loaded == [local_rank], (
        f"rank {world.rank} (LOCAL_RANK {local_rank}) loaded its om graphs on NPU {loaded}, not on NPU {local_rank}"
    )
    assert not fake.violations, fake.violations
    D.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
