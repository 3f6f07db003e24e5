"""Prompt embeddings: Gemma (eager) once per distinct prompt, cached on disk.

The cache key is the prompt plus fingerprints of the Gemma root and of the checkpoint holding the
text connectors, and what runs the connectors (eager, or the backend and the sha256 of the compiled
graph), so a second run with the same prompt never constructs the 12B text encoder, and embeddings
made by one backend or build are never served to a run of another (a parity test compares them).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ltx_ascend.atomic import atomic_path
from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as dev
from ltx_ascend.store import fingerprint_file, fingerprint_tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptEmbeddings:
    video: torch.Tensor  # [1, T, Dv] video context
    audio: torch.Tensor  # [1, T, Da] audio context


def cache_key(prompt: str, ckset: CheckpointSet, dtype: torch.dtype, producer: str = "eager") -> str:
    if ckset.gemma_root is None:
        raise UserError("prompts need the Gemma text encoder: pass --gemma-root")
    digest = hashlib.sha256()
    for part in (
        prompt,
        str(dtype),
        producer,
        fingerprint_tree(ckset.gemma_root)["sha256_sampled"],
        fingerprint_file(ckset.checkpoint)["sha256_sampled"],
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


class PromptEncoder:
    """Gemma on the device for cache misses; the connectors are whatever `connectors` runs."""

    def __init__(
        self,
        ckset: CheckpointSet,
        connectors: Callable[[], Callable[[tuple, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]],
        cache_dir: Path | None,
        device: torch.device,
        dtype: torch.dtype,
        producer: Callable[[], str] = lambda: "eager",
        *,
        offload: bool = False,
        device_log: list[tuple[str, str]] | None = None,
        encoder: Callable[[Sequence[str]], dict] | None = None,
    ) -> None:
        self.ckset = ckset
        self.connectors = connectors  # built lazily: a full cache hit needs neither Gemma nor connectors
        self.cache_dir = cache_dir
        self.device = device
        self.dtype = dtype
        self.producer = producer  # what runs the connectors: part of the cache key
        self.hits = 0
        self.text_encoder_built = False
        self.offload = offload  # return Gemma's and the connectors' device memory to the driver after use
        self.device_log = device_log if device_log is not None else []
        # prompts -> {prompt: Gemma's (hidden states, mask)} for the cache misses: Gemma built and freed
        # here, unless a resident engine's loader keeps it (loading.ModelLoader, by the memory policy).
        self.hidden_states = encoder or self._hidden_states

    def _cached(self, key: str) -> PromptEmbeddings | None:
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir else None
        if path is None or not path.is_file():
            return None
        try:
            tensors = load_file(str(path), device=str(self.device))
            return PromptEmbeddings(tensors["video"], tensors["audio"])
        except Exception as exc:  # truncated or foreign file: safetensors raises its own error types
            # A cache entry is only a saving: a damaged one is discarded and the prompt encoded again.
            log.warning("warning: prompt-cache entry %s is unreadable (%s): discarded, encoding the prompt again",
                        path, exc)  # fmt: skip
            with contextlib.suppress(OSError):  # a read-only cache: the new entry's write fails the same way
                path.unlink()
            return None

    def _store(self, key: str, emb: PromptEmbeddings, prompt: str, producer: str) -> None:
        if self.cache_dir is None:
            return
        tensors = {"video": emb.video.contiguous().cpu(), "audio": emb.audio.contiguous().cpu()}
        with atomic_path(self.cache_dir / f"{key}.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"prompt": prompt, "producer": producer})

    def encode(self, prompts: Sequence[str]) -> list[PromptEmbeddings]:
        producer = self.producer()
        keys = [cache_key(p, self.ckset, self.dtype, producer) for p in prompts]
        found = {k: self._cached(k) for k in set(keys)}
        self.hits += sum(1 for k in keys if found[k] is not None)
        missing = [p for p, k in zip(prompts, keys, strict=True) if found[k] is None]
        if missing:
            self.text_encoder_built = True
            hidden = self.hidden_states(list(dict.fromkeys(missing)))
            run = self.connectors()
            self.device_log.append(("text_connectors", "in"))
            for prompt, (states, mask) in hidden.items():
                video, audio = run(states, mask)
                emb = PromptEmbeddings(video, audio)
                key = cache_key(prompt, self.ckset, self.dtype, producer)
                self._store(key, emb, prompt, producer)
                found[key] = emb
            del run, hidden
            self._release("text_connectors")
        return [found[k] for k in keys]

    def _hidden_states(self, prompts: Sequence[str]) -> dict:
        """Gemma built for these prompts and freed right after (device memory returned with offload)."""
        encoder = load_component("text_encoder", self.ckset, device=self.device, dtype=self.dtype)
        self.device_log.append(("text_encoder", "in"))
        with torch.inference_mode():
            hidden = {p: encoder.encode(p) for p in prompts}
        del encoder
        self._release("text_encoder")
        return hidden

    def _release(self, name: str) -> None:
        """The caller dropped its last reference: free it, and with offload give the memory back."""
        gc.collect()
        if self.offload:
            dev.empty_cache(self.device)
        self.device_log.append((name, "out"))
