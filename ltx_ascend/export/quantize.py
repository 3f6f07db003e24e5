"""W8A8 for the DiT's linear layers: int8 weights per output channel, int8 activations per token.

The scheme Ascend deployments use for DiTs (msModelSlim's W8A8 dynamic). Weights are quantized once,
symmetric, one scale per output channel; activations at run time, symmetric, one scale per token, so
one token's outlier does not crush every other token's resolution. Only `transformer_blocks`' linears
are quantized, minus the `skip` patterns. One arithmetic (`QuantLinear`), three lowerings: eager
(`torch._int_mm`, the reference), ONNX Runtime (`MatMulInteger`) and Ascend (`NPUDynamicQuant` +
`QuantBatchMatMul` at opset 16, `store.ASCEND_W8A8_OPSET`); optional SmoothQuant (`smooth_alpha`).
What stays float and why, each lowering's ops and the measurements behind the choices:
docs/design/w8a8.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.onnx import symbolic_helper

W8A8 = "w8a8"
QMAX = 127.0
DEFAULT_SKIP: tuple[str, ...] = ()
_EPS = 1e-8
# Ascend's ai.onnx-domain ops are traced under this alias and moved to the default domain after export:
# torch's per-node ONNX shape inference drops the declared type of an unknown default-domain op.
AI_ONNX_ALIAS = "ltx_ai_onnx"
_TARGET = {"value": "ort"}  # which ONNX lowering the symbolic emits: "ort" or "npu"


@contextlib.contextmanager
def lowering(target: str) -> Iterator[None]:
    """During one export: emit the ORT ("ort") or the Ascend ("npu") form of every QuantLinear."""
    saved = _TARGET["value"]
    _TARGET["value"] = target
    try:
        yield
    finally:
        _TARGET["value"] = saved


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], float32 scale [out]); symmetric, per output channel."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / QMAX).clamp_min(_EPS)
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., K] float -> (int8 [..., K], float32 scale [..., 1]); symmetric, per token (row)."""
    x = x.float()
    scale = (x.abs().amax(dim=-1, keepdim=True) / QMAX).clamp_min(_EPS)
    return torch.round(x / scale).clamp_(-QMAX, QMAX).to(torch.int8), scale


# float32 holds every integer below 2^24 exactly: a K-chunk of int8 products sums to at most
# 127 * 127 * 1024 = 16,516,096 < 2^24, so a float32 GEMM over 1024 of K is an exact int8 GEMM.
EXACT_FLOAT_CHUNK = 1024


def _int8_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """[M, K] int8 @ [N, K]^T int8 -> float32 [M, N], the int32 sum exactly. With an int8 dot-product
    instruction (VNNI / AMX) torch's int8 GEMM; without one (AVX2) oneDNN's int8 GEMM ran 6x slower than
    the float one here (so did the export, which traces through it), so float32 GEMMs over K-chunks
    small enough to be exact, summed in int32: the same integers at float32 GEMM speed."""
    from ltx_ascend.cpu_isa import has_int8_dot

    m, k = xq.shape
    if xq.device.type == "cpu" and has_int8_dot() and m > 16 and k % 8 == 0 and wq.shape[0] % 8 == 0:
        return torch._int_mm(xq, wq.t()).float()
    return _chunked_float_matmul(xq, wq)


def _chunked_float_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """The exact int8 GEMM as float32 GEMMs over K-chunks of EXACT_FLOAT_CHUNK, summed in int32."""
    k = xq.shape[1]
    if k <= EXACT_FLOAT_CHUNK:
        return xq.float() @ wq.float().t()
    acc = torch.zeros(xq.shape[0], wq.shape[0], dtype=torch.int32, device=xq.device)
    for start in range(0, k, EXACT_FLOAT_CHUNK):
        stop = start + EXACT_FLOAT_CHUNK
        acc += (xq[:, start:stop].float() @ wq[:, start:stop].float().t()).to(torch.int32)
    return acc.float()


def w8a8_reference(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The arithmetic every lowering implements, in float32 (the eager reference)."""
    xq, xs = quantize_tokens(x)
    y = _int8_matmul(xq.reshape(-1, xq.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[0])
    y = y * xs * weight_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _const(g, value, dtype=torch.float32):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


class _W8A8Linear(torch.autograd.Function):
    """Traced as one node; its symbolic writes the target's quantized matmul."""

    @staticmethod
    def forward(ctx, x, weight, weight_scale, bias):
        return w8a8_reference(x, weight, weight_scale, bias)

    @staticmethod
    def symbolic(g, x, weight, weight_scale, bias):
        if _TARGET["value"] == "npu":
            return _npu_symbolic(g, x, weight, weight_scale, bias)
        return _ort_symbolic(g, x, weight, weight_scale, bias)


def _ort_symbolic(g, x, weight, weight_scale, bias):
    """Per-token uint8 (symmetric values shifted by 128, zero point 128) x int8 -> MatMulInteger."""
    x32 = g.op("Cast", x, to_i=1)
    amax = g.op("ReduceMax", g.op("Abs", x32), _const(g, [-1], torch.int64), keepdims_i=1)
    scale = g.op("Div", g.op("Max", amax, _const(g, _EPS)), _const(g, QMAX))
    q = g.op("Clip", g.op("Round", g.op("Div", x32, scale)), _const(g, -QMAX), _const(g, QMAX))
    xq = g.op("Cast", g.op("Add", q, _const(g, 128.0)), to_i=2)  # uint8
    w_t = g.op("Transpose", weight, perm_i=[1, 0])  # [N, K] -> [K, N]
    acc = g.op("MatMulInteger", xq, w_t, _const(g, 128, torch.uint8))
    y = g.op("Mul", g.op("Mul", g.op("Cast", acc, to_i=1), scale), weight_scale)
    if bias is not None and not bias.node().mustBeNone():
        y = g.op("Add", y, g.op("Cast", bias, to_i=1))
    return g.op("CastLike", y, x)


def _npu_symbolic(g, x, weight, weight_scale, bias):
    """NPUDynamicQuant (per-token int8 + float32 scale), then QuantBatchMatMul with pertoken_scale."""
    xq, x_scale = g.op(f"{AI_ONNX_ALIAS}::NPUDynamicQuant", x, outputs=2)
    sizes, w_sizes = symbolic_helper._get_tensor_sizes(x), symbolic_helper._get_tensor_sizes(weight)
    if sizes is not None:
        xq.setType(x.type().with_dtype(torch.int8))
        x_scale.setType(x.type().with_dtype(torch.float32).with_sizes(sizes[:-1]))
    dtype = {torch.float16: 1, torch.bfloat16: 27}.get(_scalar_type(x), 0)  # ge::DataType of the output
    has_bias = bias is not None and not bias.node().mustBeNone()
    empty = symbolic_helper._optional_input_placeholder_tensor  # an omitted optional input
    inputs = [xq, weight, weight_scale, empty(g), bias if has_bias else empty(g), x_scale]
    out = g.op(f"{AI_ONNX_ALIAS}::QuantBatchMatMul", *inputs, dtype_i=dtype, transpose_x1_i=0, transpose_x2_i=1)
    if sizes is not None and w_sizes is not None:  # keep static shapes flowing (the fused attention needs them)
        out.setType(x.type().with_sizes([*sizes[:-1], w_sizes[0]]))
    return out


def _scalar_type(value) -> torch.dtype | None:
    try:
        return {"Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16}[value.type().scalarType()]
    except (KeyError, RuntimeError, AttributeError):
        return None


class QuantLinear(torch.nn.Module):
    """nn.Linear with int8 weights (+ per-channel scale) and per-token int8 activations."""

    def __init__(self, linear: torch.nn.Linear, smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        if smooth is not None:
            weight = weight * smooth[None, :]
        q, scale = quantize_weight(weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(q, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.bias = (
            None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        )
        self.smooth = None if smooth is None else torch.nn.Parameter(1.0 / smooth.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x * self.smooth.to(x.dtype)
        return _W8A8Linear.apply(x, self.weight, self.weight_scale, self.bias)


def quantizable(module: torch.nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> list[str]:
    """Paths (inside `module`) of the nn.Linear layers W8A8 replaces, minus `skip` matches."""
    return [
        name
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in skip)
    ]


def quantize_module_(
    module: torch.nn.Module, skip: Sequence[str] = DEFAULT_SKIP, smooth: dict[str, torch.Tensor] | None = None
) -> list[str]:
    """Replace `module`'s linear layers (not matching `skip`) by QuantLinear, in place."""
    names = quantizable(module, skip)
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        setattr(owner, leaf, QuantLinear(getattr(owner, leaf), (smooth or {}).get(name)))
    return names


def quantize_dit_(
    model: torch.nn.Module,
    skip: Sequence[str] = DEFAULT_SKIP,
    *,
    calibrate: Callable[[], object] | None = None,
    smooth_alpha: float | None = None,
) -> int:
    """W8A8 every transformer block of an LTXModel in place (SmoothQuant factors from one float
    `calibrate()` call when `smooth_alpha` is set); returns how many linears were replaced."""
    blocks = list(model.transformer_blocks)
    per_block = [quantizable(b, skip) for b in blocks]
    smooth: dict[str, torch.Tensor] = {}
    if smooth_alpha is not None:
        if calibrate is None:
            raise ValueError("SmoothQuant needs a calibration call")
        names = [f"transformer_blocks.{i}.{n}" for i, ns in enumerate(per_block) for n in ns]
        smooth = smooth_scales(model, calibrate, names, smooth_alpha)
    for i, block in enumerate(blocks):
        quantize_module_(block, skip, {n: smooth[f"transformer_blocks.{i}.{n}"] for n in per_block[i] if smooth})
    return sum(len(ns) for ns in per_block)


def quantize_state_dict(
    state: dict[str, torch.Tensor], linear_names: Sequence[str], smooth: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """A block's float state dict -> the QuantLinear parameters of `linear_names` (LoRAs already fused)."""
    out = dict(state)
    for name in linear_names:
        weight = out[f"{name}.weight"].float()
        s = (smooth or {}).get(name)
        if s is not None:
            weight = weight * s[None, :]
            out[f"{name}.smooth"] = 1.0 / s.float()
        out[f"{name}.weight"], out[f"{name}.weight_scale"] = quantize_weight(weight)
        if f"{name}.bias" in out:
            out[f"{name}.bias"] = out[f"{name}.bias"].float()
    return out


def smooth_scales(
    module: torch.nn.Module, run: Callable[[], object], linear_names: Sequence[str], alpha: float = 0.5
) -> dict[str, torch.Tensor]:
    """SmoothQuant factors per linear from one calibration call `run()` of `module` (float weights)."""
    amax: dict[str, torch.Tensor] = {}
    hooks = []
    for name in linear_names:

        def record(_m, inputs, _out, name=name):
            a = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)

        hooks.append(module.get_submodule(name).register_forward_hook(record))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name in linear_names:
        w = module.get_submodule(name).weight.detach().float().abs().amax(0)
        s = amax[name].clamp_min(1e-5).pow(alpha) / w.clamp_min(1e-5).pow(1 - alpha)
        out[name] = s.clamp(1e-2, 1e2)
    return out
