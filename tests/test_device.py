"""Device selection, dtype policy and device ops of ltx_ascend.runtime.device.

Most tests pin the host to "no accelerators" so they mean the same on a laptop, a GPU box and an
Ascend host. The NPU branch is an API-contract test against a stand-in torch_npu (no Ascend hardware
here); it runs in a child process, see `test_npu_branch_contract`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as dev

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_accelerators(monkeypatch: pytest.MonkeyPatch):
    """A host without torch_npu and without CUDA, whatever this machine really has."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # `import torch_npu` now raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dev._probe_npu.cache_clear()
    yield
    dev._probe_npu.cache_clear()


# --------------------------------------------------------------------------- selection


def test_auto_resolves_to_cpu(no_accelerators) -> None:
    assert dev.available_backends() == ["cpu"]
    assert dev.resolve_device() == torch.device("cpu")
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")


def test_real_host_probe_does_not_raise() -> None:
    """Unpatched: whatever this host has, auto picks the first available backend and never raises."""
    dev._probe_npu.cache_clear()
    try:
        backends = dev.available_backends()
        assert backends[-1] == "cpu"
        assert dev.resolve_device().type == backends[0]
    finally:
        dev._probe_npu.cache_clear()


def _one_line_error(spec: str) -> str:
    with pytest.raises(UserError) as info:
        dev.resolve_device(spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--device {spec}:")
    return message


def test_cuda_unavailable_is_user_error(no_accelerators) -> None:
    for spec in ("cuda", "cuda:1"):
        message = _one_line_error(spec)
        assert "CUDA" in message
        assert "--device cpu" in message


def test_npu_without_torch_npu_is_user_error(no_accelerators) -> None:
    for spec in ("npu", "npu:0"):
        message = _one_line_error(spec)
        assert "torch_npu is not installed" in message
        assert "[npu] extra" in message
        assert "set_env.sh" in message
        assert "--device cpu" in message


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "npu:", "cuda:-1", "cpu:cpu", "", "gpu"])
def test_malformed_device_is_user_error(no_accelerators, spec: str) -> None:
    message = _one_line_error(spec)
    assert "use auto, cpu, cuda" in message


@pytest.mark.parametrize(
    "error",
    [
        OSError("libhccl.so: cannot open shared object file: No such file or directory"),
        ImportError("libascendcl.so: cannot open shared object file"),
        RuntimeError("ASCEND_HOME_PATH is not set\nsecond line"),
    ],
)
def test_broken_cann_means_no_npu(no_accelerators, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """torch_npu present but CANN missing: any import failure is "no NPU", and the reason is kept."""
    imports = []

    def failing_import() -> types.ModuleType:
        imports.append(1)
        raise error

    monkeypatch.setattr(dev, "_import_torch_npu", failing_import)
    assert dev.available_backends() == ["cpu"]
    assert dev.available_backends() == ["cpu"]
    assert len(imports) == 1, "the torch_npu probe must run once and be cached"

    first_line = str(error).splitlines()[0]
    message = _one_line_error("npu")
    assert f"torch_npu is not importable ({type(error).__name__}: {first_line})" in message
    assert f"no npu: torch_npu is not importable ({type(error).__name__}" in dev.describe(dev.policy_for("cpu"))


# --------------------------------------------------------------------------- dtype policy


def test_cpu_policy_defaults() -> None:
    policy = dev.policy_for(torch.device("cpu"))
    assert policy.device == torch.device("cpu")
    assert policy.dtype == torch.float32
    assert policy.high_precision_dtype == torch.float64
    assert policy.complex_device == torch.device("cpu")
    assert policy.vocoder_dtype == torch.float32
    assert isinstance(policy.vocoder_autocast(), contextlib.nullcontext)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.dtype = torch.bfloat16  # type: ignore[misc]


def test_cuda_policy_defaults() -> None:
    """policy_for does not probe, so the cuda policy can be checked on a host without CUDA."""
    policy = dev.policy_for("cuda:1")
    assert policy.dtype == torch.bfloat16
    assert policy.high_precision_dtype == torch.float64
    assert policy.complex_device == torch.device("cuda", 1)
    assert policy.vocoder_dtype == torch.bfloat16  # as ltx-core runs it; float32 is the NPU's rule


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("torch.bfloat16", torch.bfloat16),
        ("float64", torch.float64),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_override(override: str | torch.dtype, expected: torch.dtype) -> None:
    policy = dev.policy_for("cpu", override)
    assert policy.dtype == expected
    assert policy.high_precision_dtype == torch.float64
    assert policy.vocoder_dtype == expected


@pytest.mark.parametrize("bad", ["int8", "float8", "half-ish", "", torch.int8, torch.complex64])
def test_bad_dtype_is_user_error(bad: str | torch.dtype) -> None:
    with pytest.raises(UserError) as info:
        dev.policy_for("cpu", bad)
    assert "\n" not in str(info.value)
    assert "float32, bfloat16, float16" in str(info.value)


def test_describe_cpu(no_accelerators) -> None:
    line = dev.describe(dev.policy_for("cpu"))
    assert "\n" not in line
    assert line.startswith("device cpu, dtype float32, high precision float64, complex ops on cpu, vocoder float32")
    assert line.endswith("; no npu: torch_npu is not installed")


# --------------------------------------------------------------------------- CLI arguments


def test_device_args(no_accelerators) -> None:
    parser = argparse.ArgumentParser()
    dev.add_device_args(parser)
    args = parser.parse_args([])
    assert (args.device, args.dtype) == ("auto", None)
    assert dev.policy_from_args(args) == dev.policy_for("cpu")

    policy = dev.policy_from_args(parser.parse_args(["--device", "cpu", "--dtype", "bfloat16"]))
    assert (policy.device, policy.dtype) == (torch.device("cpu"), torch.bfloat16)

    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float64"])
    with pytest.raises(UserError):
        dev.policy_from_args(parser.parse_args(["--device", "npu"]))


# --------------------------------------------------------------------------- device ops


def test_cpu_device_ops_are_no_ops() -> None:
    cpu = torch.device("cpu")
    dev.synchronize(cpu)
    dev.empty_cache(cpu)
    dev.reset_peak_memory_stats(cpu)
    assert dev.max_memory_allocated(cpu) is None
    assert dev.new_stream(cpu) is None
    assert dev.new_event(cpu, enable_timing=True) is None


# --------------------------------------------------------------------------- NPU branch (contract)


def _npu_contract_checks() -> None:
    """Body of the NPU contract test. Runs in a fresh process: the renaming below cannot be undone."""
    if torch._C._get_privateuse1_backend_name() not in ("privateuseone", "npu"):
        raise SystemExit(f"PrivateUse1 is already {torch._C._get_privateuse1_backend_name()!r}")
    calls: list[tuple[object, ...]] = []

    # What `import torch_npu` does: name PrivateUse1 "npu" and add the torch.npu namespace.
    torch.utils.rename_privateuse1_backend("npu")
    torch_npu = types.ModuleType("torch_npu")
    torch_npu.__doc__ = "stand-in for torch_npu (API-contract test, no Ascend hardware)"
    standin_npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        synchronize=lambda device=None: calls.append(("npu.synchronize", device)),
        empty_cache=lambda: calls.append(("npu.empty_cache",)),
        max_memory_allocated=lambda device=None: 1234,
        reset_peak_memory_stats=lambda device=None: calls.append(("npu.reset_peak_memory_stats", device)),
        set_device=lambda device: calls.append(("npu.set_device", device)),
    )

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch_npu", torch_npu)
        mp.setattr(torch, "npu", standin_npu, raising=False)
        # CUDA present too, so "auto" has to prefer npu over cuda.
        mp.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: 1)
        dev._probe_npu.cache_clear()
        try:
            # selection: npu first, indices checked against torch.npu.device_count()
            assert dev.available_backends() == ["npu", "cuda", "cpu"]
            npu = dev.resolve_device()
            assert npu == torch.device("npu")
            assert dev.resolve_device("npu:1") == torch.device("npu", 1)
            with pytest.raises(UserError, match=r"only 2 npu device\(s\) visible"):
                dev.resolve_device("npu:2")

            # dtype policy on npu
            policy = dev.policy_for(npu)
            assert policy.dtype == torch.bfloat16
            assert policy.high_precision_dtype == torch.float32
            assert policy.complex_device == torch.device("cpu")
            assert policy.vocoder_dtype == torch.float32
            assert isinstance(policy.vocoder_autocast(), contextlib.nullcontext)
            assert dev.policy_for(npu, "fp32").dtype == torch.float32
            for f64 in ("float64", torch.float64):
                with pytest.raises(UserError, match="no float64"):
                    dev.policy_for(npu, f64)
            assert dev.describe(policy).startswith("device npu, dtype bfloat16, high precision float32")
            assert "no npu" not in dev.describe(policy)

            # device ops, generic path: torch_npu's hooks make torch.accelerator drive the npu
            def via_accelerator(name: str):
                def forward(*args):
                    calls.append(("accelerator." + name, *args))
                    return getattr(torch.npu, name)(*args)

                return forward

            mp.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("npu"))
            for name in ("synchronize", "empty_cache", "max_memory_allocated", "reset_peak_memory_stats"):
                mp.setattr(torch.accelerator, name, via_accelerator(name))
            dev.synchronize(npu)
            dev.empty_cache(npu)
            dev.reset_peak_memory_stats(npu)
            assert dev.max_memory_allocated(npu) == 1234
            assert calls == [
                ("accelerator.synchronize", npu),
                ("npu.synchronize", npu),
                ("accelerator.empty_cache",),
                ("npu.empty_cache",),
                ("accelerator.reset_peak_memory_stats", npu),
                ("npu.reset_peak_memory_stats", npu),
                ("accelerator.max_memory_allocated", npu),
            ]

            # fallback path: npu is not the current accelerator, so the backend module is used
            calls.clear()
            mp.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)
            dev.synchronize(npu)
            dev.empty_cache(npu)
            dev.set_device(torch.device("npu", 1))  # what has torch_npu run its aclInit before pyACL's
            assert calls == [("npu.synchronize", npu), ("npu.empty_cache",), ("npu.set_device", torch.device("npu", 1))]
            assert dev.torch_npu_loaded()
        finally:
            dev._probe_npu.cache_clear()


@pytest.mark.contract
def test_npu_branch_contract() -> None:
    """API-contract test with a stand-in torch_npu module and torch.npu namespace (no Ascend hardware here).

    Checks that auto prefers npu, the NPU dtype policy (bf16, float32 instead of float64, complex ops on
    cpu, float32 vocoder without autocast) and that synchronize/empty_cache reach torch.npu. It runs in
    a child process because, like the real torch_npu, the stand-in renames torch's PrivateUse1 backend to
    "npu"; that cannot be undone and would leave torch.accelerator asking for torch.npu afterwards.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, __file__, "--npu-contract"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- repo-wide rule


def test_only_device_module_names_backend_namespaces() -> None:
    """No module but runtime/device.py may name torch.cuda or torch.npu: everything goes through it."""
    package = REPO / "ltx_ascend"
    allowed = package / "runtime" / "device.py"
    offenders = [
        f"{path.relative_to(REPO)}: {needle}"
        for path in sorted(package.rglob("*.py"))
        if path != allowed
        for needle in ("torch.cuda", "torch.npu")
        if needle in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


if __name__ == "__main__" and sys.argv[1:] == ["--npu-contract"]:
    _npu_contract_checks()
