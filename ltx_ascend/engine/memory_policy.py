"""Where each model of a resident engine lives between requests: on the device, parked in host memory,
or rebuilt per use; chosen once from the device's memory with the DiT memory model ltx-plan uses.

`device`: loaded once and left on the device (no cost per request).
`host`: loaded once into host memory; moved onto the device for its own calls and back after (a
    host-to-device copy of its weights per use; the text encoder is only used on a prompt-cache miss).
`rebuild`: built from the checkpoint for each use and freed after it (what a one-shot ltx-run always
    did: a disk read, LoRA fusion and quantization per use, no memory held between requests).

The choice: start with everything on the device; while the peak (what stays resident plus the
largest thing moved in alongside it: a parked model, or the DiT's activations) exceeds the usable
device memory, demote the model whose demotion costs least per request for the memory it frees:
the text encoder first (used only on prompt-cache misses), then the DiT weight sets, then the rest.
A model that does not fit in host memory either is rebuilt. A placement that still does not fit
is kept and says so (`does_not_fit`): a streamed DiT, for one, needs less than this model counts.
`RunSettings.placement` overrides any component (`text_encoder=host,dit=rebuild`). On a CPU the
device is host memory: what does not fit is rebuilt (there is nowhere to park it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ltx_ascend.errors import UserError
from ltx_ascend.runtime.dit_memory import USABLE_FRACTION, dit_memory, meta_dit
from ltx_ascend.shapes import ShapeProfile

PLACES = ("device", "host", "rebuild")
# Components a pipeline's requests use, in the order the table lists them. "dit" stands for every
# DiT weight set (a two-stage pipeline's stage 2 fuses the distilled LoRA: a second set).
COMPONENTS = (
    "text_encoder",
    "text_connectors",
    "dit",
    "video_encoder",
    "spatial_upsampler",
    "video_decoder",
    "audio_decoder",
    "vocoder",
    "audio_encoder",
)
# Demotion order: cheapest per request first (the text encoder runs only on prompt-cache misses).
DEMOTE_FIRST = ("text_encoder", "dit", "video_encoder", "spatial_upsampler", "audio_encoder")
SIGLIP_WEIGHTS = int(0.4e9)  # Gemma-3's vision tower, loaded with the text encoder
GEMMA3_12B_TEXT = {"hidden_size": 3840, "num_hidden_layers": 48}  # sizes the connectors when no Gemma root is given


def parse_placement(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """`text_encoder=host,dit=rebuild` (or a mapping) -> {component: place}, checked."""
    if not text:
        return {}
    items = text.items() if isinstance(text, Mapping) else (p.partition("=")[::2] for p in text.split(",") if p.strip())
    out = {}
    for name, place in items:
        name, place = name.strip(), place.strip()
        if name not in COMPONENTS:
            raise UserError(f"--placement {name}={place}: no component {name!r}; components: {', '.join(COMPONENTS)}")
        if place not in PLACES:
            raise UserError(f"--placement {name}={place}: choose device, host or rebuild")
        out[name] = place
    return out


@dataclass(frozen=True)
class Placement:
    component: str
    place: str
    weight_bytes: int  # one weight set (the DiT: each of `sets`)
    sets: int = 1
    why: str = ""


@dataclass(frozen=True)
class MemoryPolicy:
    """The chosen place of every component, and the numbers it was chosen from."""

    device: str
    device_bytes: int | None  # None: the device is host memory (cpu)
    usable_bytes: int | None
    activation_bytes: int  # the DiT's peak activations at the planned shape
    placements: dict[str, Placement] = field(default_factory=dict)
    h2d_gb_s: float = 32.0  # host-to-device link for the per-request copy estimate (ltx-plan's default)
    does_not_fit: str | None = None  # why even this placement exceeds the device (printed; the run may still stream)

    def place(self, component: str) -> str:
        p = self.placements.get(component)
        return "device" if p is None else p.place

    def resident_bytes(self) -> int:
        return sum(p.weight_bytes * p.sets for p in self.placements.values() if p.place == "device")

    def peak_bytes(self) -> int:
        """Resident weights plus the largest thing brought in beside them (a parked or rebuilt
        model, one DiT weight set at a time, or the DiT's activations)."""
        moved = [p.weight_bytes for p in self.placements.values() if p.place != "device"]
        dit = self.placements.get("dit")
        act = self.activation_bytes + (dit.weight_bytes if dit is not None and dit.place != "device" else 0)
        return self.resident_bytes() + max([act, *moved])

    def describe(self) -> str:
        """The table ltx-run and the engine print once."""
        cap = "size unknown: all resident" if self.device_bytes is None else f"{self.device_bytes / 1e9:.0f} GB"
        usable = "" if self.usable_bytes is None else f", {self.usable_bytes / 1e9:.1f} GB usable"
        lines = [
            f"memory policy on {self.device} ({cap}{usable}); DiT activations ~{self.activation_bytes / 1e9:.2f} GB",
            f"{'component':<18} {'place':<8} {'weights GB':>11} {'per request':>28}",
        ]
        for p in self.placements.values():
            gb = p.weight_bytes * p.sets / 1e9
            sets = f" ({p.sets} sets)" if p.sets > 1 else ""
            lines.append(f"{p.component:<18} {p.place:<8} {gb:>11.2f} {self._cost(p):>28}{sets}")
        lines.append(f"resident ~{self.resident_bytes() / 1e9:.1f} GB, peak ~{self.peak_bytes() / 1e9:.1f} GB")
        if self.does_not_fit:
            lines.append(f"warning: does not fit: {self.does_not_fit}")
        return "\n".join(lines)

    def _cost(self, p: Placement) -> str:
        if p.place == "device":
            return "none"
        copy_s = p.weight_bytes * p.sets / (self.h2d_gb_s * 1e9)
        when = " on a prompt-cache miss" if p.component == "text_encoder" else ""
        if p.place == "host":
            return f"copy in ~{copy_s:.2f} s{when}"
        return f"rebuild from disk{when}"


def component_bytes(config: dict[str, Any], bytes_per: int, *, gemma_config: dict | None = None) -> dict[str, int]:
    """Weight bytes of each component from the checkpoint's config alone (ltx-core's modules on the
    meta device; Gemma from ltx-core's built-in 12B config). The vocoder runs in float32."""
    from ltx_ascend.checkpoints.gemma import embeddings_processor_configurator
    from ltx_ascend.checkpoints.loader import configurator_of

    sizes: dict[str, int] = {}
    with torch.device("meta"):
        sizes["dit"] = _numel(meta_dit(config)) * bytes_per
        for name in ("video_encoder", "video_decoder", "audio_decoder", "vocoder", "audio_encoder"):
            try:
                module = configurator_of(name).from_config(config)
            except Exception:  # a config without this component (e.g. no audio encoder): not sized
                continue
            sizes[name] = _numel(module) * (4 if name == "vocoder" else bytes_per)
        try:
            connectors = embeddings_processor_configurator(gemma_config or GEMMA3_12B_TEXT).from_config(config)
            sizes["text_connectors"] = _numel(connectors) * bytes_per
        except Exception:  # an older config: the connectors are sized by their file when it is read
            pass
    sizes["text_encoder"] = gemma_weight_count() * bytes_per
    return sizes


def gemma_weight_count() -> int:
    """Gemma-3 12B (ltx-core's built-in config): its weights, plus the SigLIP vision tower (~0.4 B)."""
    from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX

    t = GEMMA3_CONFIG_FOR_LTX.text_config
    per_layer = 4 * t.hidden_size * t.head_dim * t.num_attention_heads + 3 * t.hidden_size * t.intermediate_size
    return int(t.num_hidden_layers * per_layer + t.vocab_size * t.hidden_size) + SIGLIP_WEIGHTS


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def device_memory_bytes(device: torch.device) -> int | None:
    """The device's total memory (None on a CPU, where the device is host memory)."""
    if device.type == "cpu":
        return None
    backend = getattr(torch, device.type, None)
    try:
        return int(backend.mem_get_info(device)[1])
    except Exception:  # no query on this backend: the policy then keeps everything resident
        return None


def host_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def choose_policy(
    config: dict[str, Any],
    profile: ShapeProfile,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    components: tuple[str, ...],
    dit_sets: int = 1,
    device_bytes: int | None = None,
    host_bytes: int | None = None,
    overrides: Mapping[str, str] | None = None,
    extra_bytes: Mapping[str, int] | None = None,
    h2d_gb_s: float = 32.0,
    gemma_config: dict | None = None,
) -> MemoryPolicy:
    """The placement of `components` for requests at `profile` (the largest planned), see the module."""
    bytes_per = torch.finfo(dtype).bits // 8
    sizes = {**component_bytes(config, bytes_per, gemma_config=gemma_config), **(extra_bytes or {})}
    activation = dit_memory(config, profile, bytes_per, profile.batch).activation_bytes
    overrides = dict(overrides or {})
    if device_bytes is None and isinstance(device, torch.device):
        device_bytes = device_memory_bytes(device)
    host_bytes = host_bytes if host_bytes is not None else host_memory_bytes()
    on_host = str(device).startswith("cpu")  # the device is host memory: nowhere to park, only rebuild
    if on_host:
        device_bytes = host_bytes
    usable = None if device_bytes is None else int(device_bytes * USABLE_FRACTION)
    placements = {}
    for name in (n for n in COMPONENTS if n in components):
        sets = dit_sets if name == "dit" else 1
        why = "override" if name in overrides else "fits"
        placements[name] = Placement(name, overrides.get(name, "device"), sizes.get(name, 0), sets, why)
    policy = MemoryPolicy(str(device), device_bytes, usable, activation, placements, h2d_gb_s)
    if usable is None:
        return policy
    demotable = [n for n in (*DEMOTE_FIRST, *COMPONENTS) if n in placements and n not in overrides]
    parked = sum(p.weight_bytes * p.sets for p in placements.values() if p.place == "host")
    for name in dict.fromkeys(demotable):
        if policy.peak_bytes() <= usable:
            break
        p = placements[name]
        size = p.weight_bytes * p.sets
        place = "host" if not on_host and parked + size <= host_bytes * USABLE_FRACTION else "rebuild"
        parked += size if place == "host" else 0
        placements[name] = Placement(name, place, p.weight_bytes, p.sets, "does not fit beside the rest")
        policy = MemoryPolicy(str(device), device_bytes, usable, activation, placements, h2d_gb_s)
    if policy.peak_bytes() > usable:
        pinned = f" (placement pins {', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""
        why = (
            f"~{policy.peak_bytes() / 1e9:.1f} GB needed at {profile.key} with every other model parked{pinned}, "
            f"{usable / 1e9:.1f} GB usable: change the placement, stream the DiT (--max-device-memory) or use a "
            "smaller shape"
        )
        policy = MemoryPolicy(str(device), device_bytes, usable, activation, placements, h2d_gb_s, why)
    return policy


def file_weight_bytes(paths, bytes_per: int) -> int:
    """Weights of .safetensors files at `bytes_per` bytes an element, from their headers (no tensor read)."""
    from safetensors import safe_open

    total = 0
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                shape = f.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count * bytes_per
    return total
