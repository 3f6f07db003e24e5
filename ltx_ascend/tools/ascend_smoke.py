"""`ltx-ascend-smoke`: prove the om path on an Ascend host in one command.

1. ATC-compiles one tiny graph (two equal-shaped weight inputs, a float16 branch), loads it with the
   om session, runs it on host feeds (and on NPU feeds, bound without copies, when torch_npu is
   usable) and compares with ONNX Runtime on the same graph and feeds;
2. closes the session and runs a torch_npu op, which fails if the thread were left on a destroyed
   context or ACL had been finalised under torch_npu;
3. unless --quick: `ltx-verify --backend om` and `ltx-bench --backends om` on a tiny-set component
   (the bench feeds NPU tensors when torch_npu is usable, so the om row is the bound, no-copy path).

On a host without CANN it stops at once with one line saying what is missing (exit 2). Any failed
check exits 1. Written against the CANN documents; not run on Ascend hardware where it was written.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from ltx_ascend.compile.atc import AtcJob, detect_soc_with_source, find_atc, run_atc
from ltx_ascend.errors import UserError, cli_entry
from ltx_ascend.graph_lint import format_violations, lint_onnx
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime.om_session import OmSession, import_acl
from ltx_ascend.runtime.session import TensorSpec

ROWS, WIDTH = 4, 16
TOLERANCE = {"float32": 1e-3, "float16": 1e-2}  # max abs error vs ONNX Runtime (softmax outputs lie in [0, 1])


def tiny_graph(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """y = softmax(x @ w.a - 2 * (x @ w.b)), z = h * 2 + 1 (float16): ops from ATC's ONNX registry.
    w.a and w.b have the same shape, so feeding them by position instead of by name shows in y."""
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    two32 = helper.make_tensor("two32", f32, [], [2.0])
    two16 = helper.make_tensor("two16", f16, [], [2.0])
    one16 = helper.make_tensor("one16", f16, [], [1.0])
    nodes = [
        helper.make_node("MatMul", ["x", "w.a"], ["xa"], name="matmul_a"),
        helper.make_node("MatMul", ["x", "w.b"], ["xb"], name="matmul_b"),
        helper.make_node("Mul", ["xb", "two32"], ["xb2"], name="scale_b"),
        helper.make_node("Sub", ["xa", "xb2"], ["logits"], name="sub"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
        helper.make_node("Mul", ["h", "two16"], ["h2"], name="scale_h"),
        helper.make_node("Add", ["h2", "one16"], ["z"], name="shift_h"),
    ]
    inputs = [("x", f32, "float32", [ROWS, WIDTH]), ("w.a", f32, "float32", [WIDTH, WIDTH]),
              ("w.b", f32, "float32", [WIDTH, WIDTH]), ("h", f16, "float16", [ROWS, WIDTH])]  # fmt: skip
    outputs = [("y", f32, "float32", [ROWS, WIDTH]), ("z", f16, "float16", [ROWS, WIDTH])]
    graph = helper.make_graph(
        nodes,
        "ltx_ascend_smoke",
        [helper.make_tensor_value_info(n, t, s) for n, t, _, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, _, s in outputs],
        initializer=[two32, two16, one16],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    violations = lint_onnx(path)
    if violations:
        raise RuntimeError(f"the smoke graph fails the ATC lint:\n{format_violations(violations)}")
    specs = [TensorSpec(n, tuple(s), d) for n, _, d, s in inputs]
    return specs, [TensorSpec(n, tuple(s), d) for n, _, d, s in outputs]


def _feeds(specs: list[TensorSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(s.shape, generator=gen).to(s.torch_dtype) for s in specs}


def _compare(name: str, got: dict[str, torch.Tensor], want: list[np.ndarray], outputs: list[TensorSpec]) -> bool:
    ok = True
    for spec, ref in zip(outputs, want, strict=True):
        err = float((got[spec.name].cpu().float() - torch.from_numpy(ref).float()).abs().max())
        passed = err <= TOLERANCE[spec.dtype]
        ok &= passed
        print(f"  {name:<28} {spec.name} max abs err vs ORT {err:.2e} (<= {TOLERANCE[spec.dtype]:g}): "
              f"{'ok' if passed else 'FAIL'}")  # fmt: skip
    return ok


def _preflight(soc: str | None) -> str:
    """One line and exit 2 on a host without CANN: ATC, pyACL and a known SoC are all needed."""
    setup = "run it on an Ascend host after `source /usr/local/Ascend/ascend-toolkit/set_env.sh`"
    if find_atc() is None:
        raise UserError(f"ascend smoke: no CANN here (ATC not found, nor ASCEND_TOOLKIT_HOME/bin/atc); {setup}")
    try:
        import_acl()
    except UserError:
        raise UserError(f"ascend smoke: no CANN here (pyACL's `acl` module does not import); {setup}") from None
    if soc:
        return soc
    found, why = detect_soc_with_source()
    if found is None:
        raise UserError(f"ascend smoke: the SoC is unknown ({why}); pass --soc, e.g. --soc Ascend910B4")
    return found


def smoke_graph(work: Path, soc: str, device_id: int) -> bool:
    print(f"[1] ATC-compile a tiny graph for {soc}, run it on the om session, compare with ONNX Runtime")
    inputs, outputs = tiny_graph(work / "smoke.onnx")
    job = AtcJob(work / "smoke.onnx", work / "smoke", soc, {s.name: s.shape for s in inputs})  # type: ignore[misc]
    start = time.perf_counter()
    om = run_atc(job, find_atc(), log_file=work / "smoke.atc.log")  # type: ignore[arg-type]
    print(f"  ATC wrote {om.name} in {time.perf_counter() - start:.1f} s")
    feeds = _feeds(inputs)
    want = ort.InferenceSession(str(work / "smoke.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {k: v.numpy() for k, v in feeds.items()}
    )
    npu = "npu" in dev.available_backends()
    ok = True
    with OmSession(om, inputs, outputs, device_id=device_id) as session:
        ok &= _compare("host feeds (copied)", session.run(feeds), want, outputs)
        if npu:
            on_npu = {k: v.to(session.torch_device) for k, v in feeds.items()}
            ok &= _compare("NPU feeds (bound, no copy)", session.run(on_npu), want, outputs)
            swapped = {**on_npu, "w.a": on_npu["w.b"], "w.b": on_npu["w.a"]}
            differs = float((session.run(swapped)["y"].cpu() - torch.from_numpy(want[0])).abs().max()) > 1e-3
            print(f"  swapped weights change y (inputs bound by name): {'ok' if differs else 'FAIL'}")
            ok &= differs
        else:
            print("  NPU feeds: skipped (torch_npu is not usable here)")
    print("[2] after close: a torch_npu op on this thread")
    if npu:
        device = torch.device("npu", device_id)
        value = float((torch.ones(8, device=device) + 1).sum().cpu())
        dev.synchronize(device)
        print(f"  torch_npu op after close: {'ok' if value == 16.0 else f'FAIL (got {value})'}")
        ok &= value == 16.0
    else:
        print("  skipped (torch_npu is not usable here)")
    return ok


def smoke_tiny_set(work: Path, soc: str) -> bool:
    """`ltx-verify --backend om` and `ltx-bench --backends om` on one small tiny-set component."""
    from ltx_ascend.compile.compiler import compile_om
    from ltx_ascend.export.exporter import export_component
    from ltx_ascend.tools.bench import _items, bench_component
    from ltx_ascend.tools.verify import verify_artifact

    print("[3] ltx-verify --backend om on the tiny set's audio decoder")
    artifacts = work / "artifacts"  # the same folders ltx-bench uses below: one tiny set, one export, one ATC run
    ckset, options, profile = _items("tiny", "audio_decoder", "9x64x96", artifacts, torch.float32)
    exported = export_component("audio_decoder", ckset, profile, out=artifacts / "bench", options=options).folder
    compile_om(exported, soc, None, force=False, dry_run=False)
    results = verify_artifact(exported, backend="om")
    ok = bool(results) and all(r.passed and r.backend == "om" for r in results)
    for r in results:
        worst = min(c.cosine for c in r.outputs.values())
        print(f"  {r.graph} on {r.backend}: min cosine {worst:.6f}: {'ok' if r.passed else 'FAIL'}")
    print("[4] ltx-bench --backends om on the same component")
    rows = bench_component("audio_decoder", "tiny", "9x64x96", ["om"], artifacts, 3, None, soc)
    for name, row in rows["results"].items():
        for backend, stats in row.items():
            print(f"  {name} {backend:<5} median {stats['median_s'] * 1e3:.2f} ms")
    return ok and all("om" in row for row in rows["results"].values())


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ltx-ascend-smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--soc", help="ATC --soc_version (default: this host's, from acl.get_soc_name / npu-smi)")
    parser.add_argument("--device-id", type=int, default=0, help="NPU to run on (default 0)")
    parser.add_argument("--quick", action="store_true", help="only the tiny graph and the torch_npu check")
    parser.add_argument("--workdir", type=Path, help="keep the graph, .om and ATC log here (default: a temp dir)")
    args = parser.parse_args(argv)
    soc = _preflight(args.soc)
    with tempfile.TemporaryDirectory(prefix="ltx-ascend-smoke-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ok = smoke_graph(work, soc, args.device_id)
        if not args.quick:
            ok &= smoke_tiny_set(work, soc)
    print(f"ascend smoke on {soc}: {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
