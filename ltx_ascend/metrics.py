"""How a compiled output is compared with eager ltx-core, and the tolerances, kept in one place.

Tests, `ltx-export --verify` and `ltx-verify` all call `compare` and `TOLERANCES`; a threshold
changes here or nowhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    max_rel_l2: float


# Per graph dtype. float32 is what CPU tests and the tiny set run; the half types are for NPU/GPU.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(min_cosine=0.9999, max_rel_l2=1e-3),
    "float16": Tolerance(min_cosine=0.999, max_rel_l2=1e-2),
    "bfloat16": Tolerance(min_cosine=0.995, max_rel_l2=5e-2),
}


@dataclass(frozen=True)
class Comparison:
    cosine: float
    rel_l2: float
    max_abs: float
    mean_abs: float
    nan: int
    inf: int
    psnr_db: float | None = None

    def passes(self, tolerance: Tolerance) -> bool:
        return (
            self.nan == 0
            and self.inf == 0
            and self.cosine >= tolerance.min_cosine
            and self.rel_l2 <= tolerance.max_rel_l2
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _as_float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def compare(
    reference: torch.Tensor | np.ndarray, output: torch.Tensor | np.ndarray, *, peak: float | None = None
) -> Comparison:
    """Cosine, relative L2, max/mean abs error and NaN/Inf counts of `output` against `reference`.

    `peak` (e.g. 2.0 for video in [-1, 1], 255 for uint8 frames) also gives PSNR.
    """
    ref, out = _as_float64(reference), _as_float64(output)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    nan, inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
    finite = np.isfinite(out) & np.isfinite(ref)
    ref_f, out_f = ref[finite], out[finite]
    diff = out_f - ref_f
    ref_norm, out_norm = np.linalg.norm(ref_f), np.linalg.norm(out_f)
    if ref_norm == 0 and out_norm == 0:
        cosine = 1.0
    elif ref_norm == 0 or out_norm == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(ref_f, out_f) / (ref_norm * out_norm))
    rel_l2 = float(np.linalg.norm(diff) / ref_norm) if ref_norm else float(np.linalg.norm(diff))
    psnr = None
    if peak is not None:
        mse = float(np.mean(diff**2)) if diff.size else 0.0
        psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    return Comparison(
        cosine=cosine,
        rel_l2=rel_l2,
        max_abs=float(np.abs(diff).max()) if diff.size else 0.0,
        mean_abs=float(np.abs(diff).mean()) if diff.size else 0.0,
        nan=nan,
        inf=inf,
        psnr_db=psnr,
    )


def ssim(reference: torch.Tensor | np.ndarray, output: torch.Tensor | np.ndarray, *, peak: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03) of two frame stacks [F, H, W, C], per frame and channel, averaged. 1.0 means equal."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    out = torch.as_tensor(np.asarray(output), dtype=torch.float64)
    if ref.shape != out.shape or ref.dim() != 4:
        raise ValueError(f"ssim takes two [F, H, W, C] stacks of one shape: {tuple(ref.shape)}, {tuple(out.shape)}")
    size, sigma = 11, 1.5
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:  # valid convolution, as the reference implementation
        return torch.nn.functional.conv2d(t, window)

    a = ref.permute(0, 3, 1, 2).reshape(-1, 1, ref.shape[1], ref.shape[2])
    b = out.permute(0, 3, 1, 2).reshape(-1, 1, out.shape[1], out.shape[2])
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())
