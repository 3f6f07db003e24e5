"""The artifact store: what an artifact is, where it lives, and the manifest that proves it.

Export writes it, compile adds to it, the runtime and the tools read it; all of them through this
module, which imports none of them.

- **Identity** (component, shape profile, dtype, graph form, source fingerprints): what the graphs
  compute. Two artifacts with one identity give the same numbers (up to their variant's rounding).
- **Variant** (`Variant`: Ascend-fused ops, ORT-fused ops, DiT layout, quantization): how the graphs
  are built for a runtime. Variants of one identity sit side by side, so a backend can take the one
  that suits it best.
- **Layout** (docs/design/store.md):

      <out>/<component>/<graph shape>-<dtype>-<identity key>/<variant label>-<variant key>/   manifest.json, *.onnx
                                                                            .../ort-<ep>/                ltx-compile
                                                                            .../om-<soc>-<precision>/    ltx-compile
      <out>/weights/<content key>/                 weight files graphs take as inputs, shared by every
                                                   shape, layout and variant made from the same weights

  Sources are identified by content (size, header, sampled hash), never by path, and the graph shape
  holds only what changes a graph's shapes: a store copied elsewhere, with its checkpoints at other
  paths, is found as it is.

A request (identity + variant fields) hashes to a key; an artifact whose manifest carries the same key
is a hit, one that differs is refused with the fields that differ named.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ltx_ascend import backends, dtypes
from ltx_ascend.atomic import atomic_write_text, file_lock, replace_dir
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import GRAPH_SHAPE_FIELDS, ShapeProfile, shape_name

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_SAMPLES = 16
_SAMPLE_BYTES = 1 << 20
FINGERPRINT_METHOD = (
    f"sha256 over: file size, the safetensors header (keys, dtypes, shapes, offsets, metadata), "
    f"and {_SAMPLES} evenly spaced {_SAMPLE_BYTES >> 20} MiB samples of the tensor data"
)


_FINGERPRINTS: dict[tuple, dict[str, Any]] = {}
_SETTLED_NS = 2_000_000_000


def fingerprint_file(path: str | Path) -> dict[str, Any]:
    """A fast identity for a weights file by its content: reads ~16 MiB whatever the size (44 GB included).

    A changed header (which holds the checkpoint's config), size or any sampled byte changes it; a
    change confined to unsampled bytes of an identically shaped file would not: the method is
    recorded with the value. The path is not part of it, so a store finds its sources wherever they
    are mounted (`source_paths` keeps where they were, as a hint for ltx-verify only).
    """
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    # Remembered within this process for files unchanged for a while (an mtime tick is coarse: a file
    # rewritten within it at the same size would look the same, so recent files are read again).
    settled = time.time_ns() - stat.st_mtime_ns > _SETTLED_NS
    if settled and memo in _FINGERPRINTS:
        return dict(_FINGERPRINTS[memo])
    digest = hashlib.sha256()
    size = stat.st_size
    digest.update(str(size).encode())
    with path.open("rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if path.suffix == ".safetensors" and 0 < header_len < size:
            digest.update(f.read(header_len))
        start = f.tell()
        span = max(size - start, 0)
        for i in range(_SAMPLES):
            f.seek(start + (span * i) // _SAMPLES)
            digest.update(f.read(_SAMPLE_BYTES))
    found = {"size": size, "sha256_sampled": digest.hexdigest()}
    if settled:
        _FINGERPRINTS[memo] = found
    return dict(found)


def fingerprint_tree(root: str | Path, patterns: tuple[str, ...] = ("*.json", "*.model", "*.safetensors")) -> dict:
    """Fingerprint of a folder (a Gemma root): every matching file, sorted by relative path."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for pattern in patterns for p in root.rglob(pattern)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(fingerprint_file(path)["sha256_sampled"].encode())
    return {"sha256_sampled": digest.hexdigest()}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("ltx-ascend", "ltx-core", "torch", "onnx", "onnxruntime", "torch-npu"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def contained(folder: str | Path, name: str, source: str = MANIFEST) -> Path:
    """`folder / name`, refused unless it stays inside `folder`: a manifest (possibly from a store
    shared between hosts or users) must never make us open a file elsewhere.

    `name` must be a relative path without `..` parts, and no symlink (the file or a folder on its
    way) may lead out of `folder` either. Checked before anything is opened. `source` is the file that
    named it (for the message)."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UserError(f"{folder / source}: {name!r} is not a file name: rebuild the artifact with --force")
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or "\\" in name:
        raise UserError(
            f"{folder / source} names {name!r}, outside its folder (absolute or `..`): refused; "
            "rebuild the artifact with --force (and check who wrote this store)"
        )
    path = folder / name
    root, target = folder.resolve(), path.resolve()  # a link (to the file or a folder on its way) is followed
    if root not in target.parents:
        raise UserError(
            f"{path} leads to {target}, outside {root} (a symlink): refused; rebuild the artifact with --force "
            "(and check who wrote this store)"
        )
    return path


def manifest_names(body: dict[str, Any]) -> list[str]:
    """Every file name a manifest body refers to: `files`, `sizes`, and each graph's `file` / `onnx`."""
    names = [*body.get("files", {}), *body.get("sizes", {})]
    graphs = body.get("io", {}).get("graphs", {}) if isinstance(body.get("io"), dict) else {}
    for entry in graphs.values() if isinstance(graphs, dict) else ():
        if isinstance(entry, dict):
            names += [entry[k] for k in ("file", "onnx") if k in entry]
    return names


def request_key(request: dict[str, Any]) -> str:
    """Stable hash of what an artifact must match (never of when or where it was built)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """What `manifest.json` holds. `request` is everything the key is computed from."""

    kind: str  # "onnx" (exported), "ort" (ORT-optimised), "om" (ATC)
    component: str
    variant: str
    request: dict[str, Any]
    io: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> bytes (checked at every load)
    extra: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=tool_versions)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: int = SCHEMA_VERSION

    @property
    def key(self) -> str:
        return request_key(self.request)

    def to_json(self) -> str:
        body = {
            "schema": self.schema,
            "kind": self.kind,
            "component": self.component,
            "variant": self.variant,
            "key": self.key,
            "request": self.request,
            "io": self.io,
            "files": self.files,
            "sizes": self.sizes,
            "extra": self.extra,
            "tools": self.tools,
            "created": self.created,
            "fingerprint_method": FINGERPRINT_METHOD,
        }
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    def write(self, folder: str | Path) -> Path:
        """Written last and atomically: an artifact folder is complete iff its manifest exists."""
        path = Path(folder) / MANIFEST
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{folder}: no {MANIFEST}; not an ltx-ascend artifact (or not finished)") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc.msg}): rebuild the artifact with --force") from None
        if body.get("schema") != SCHEMA_VERSION:
            raise UserError(
                f"{path}: manifest schema {body.get('schema')} is not {SCHEMA_VERSION}: rebuild it with --force"
            )
        missing = [k for k in ("kind", "component", "variant", "request", "io") if k not in body]
        if missing:
            raise UserError(
                f"{path}: no {', '.join(missing)} field (edited by hand?): rebuild the artifact with --force"
            )
        manifest = cls(
            kind=body["kind"],
            component=body["component"],
            variant=body["variant"],
            request=body["request"],
            io=body["io"],
            files=body.get("files", {}),
            sizes=body.get("sizes", {}),
            extra=body.get("extra", {}),
            tools=body.get("tools", {}),
            created=body.get("created", ""),
        )
        if manifest.key != body.get("key"):
            raise UserError(f"{path}: its key does not match its request (edited by hand?): rebuild with --force")
        for name in manifest_names(body):  # before any caller joins a name to the folder
            contained(folder, name)
        return manifest

    def files_present(self, folder: str | Path) -> bool:
        return all(contained(folder, name).is_file() for name in self.files)

    def graph_file(self, folder: str | Path, graph: str) -> Path:
        """The file of graph `graph` inside `folder` (checked to stay inside it)."""
        return contained(folder, self.io["graphs"][graph]["file"])


def differences(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable paths of the request fields that differ, e.g. `source.loras[0].strength`."""
    out = []
    for k in sorted(set(expected) | set(found)):
        a, b = expected.get(k), found.get(k)
        where = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, where + ".")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                if isinstance(x, dict) and isinstance(y, dict):
                    out += differences(x, y, f"{where}[{i}].")
                elif x != y:
                    out.append(f"{where}[{i}]")
        elif a != b:
            out.append(where)
    return out


def check_matches(folder: str | Path, expected_request: dict[str, Any]) -> Manifest:
    """The artifact's manifest, or a one-line refusal naming what differs from the request."""
    manifest = Manifest.read(folder)
    if manifest.key != request_key(expected_request):
        diff = differences(expected_request, manifest.request)
        shown = ", ".join(diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
        raise UserError(f"artifact {folder} was built for another request ({shown} differ): re-export, or pass --force")
    if not manifest.files_present(folder):
        missing = [n for n in manifest.files if not (Path(folder) / n).is_file()]
        raise UserError(f"artifact {folder} is missing {', '.join(missing)}: rebuild it with --force")
    return manifest


def file_hashes(folder: str | Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(Path(folder) / name) for name in names if (Path(folder) / name).is_file()}


def file_sizes(folder: str | Path, names: list[str]) -> dict[str, int]:
    return {name: (Path(folder) / name).stat().st_size for name in names if (Path(folder) / name).is_file()}


# Per artifact folder: file name -> [size, mtime_ns, sha256] of files already hashed, so a load re-hashes
# only what changed since (a 0.77 GB block file took 0.65 s to hash here; 48 of them would cost ~31 s).
VERIFIED = ".verified.json"


def verify_files(folder: str | Path, manifest: Manifest, rebuild: str, *, rehash: bool = False) -> None:
    """Check every file the manifest records against its size and sha256 before anything reads it.

    A file whose size and mtime match an earlier successful check is not hashed again (the result is
    cached in `.verified.json` beside it, written best-effort: a read-only store re-hashes), unless
    `rehash` (compile, `ltx-verify --rehash`: see docs/design/hash-cache.md for what the cache does and
    does not promise). `rebuild` is the command that makes the artifact again, named in the error."""
    folder = Path(folder)
    cache_path = folder / VERIFIED
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    changed = False
    for name, expected in manifest.files.items():
        path = contained(folder, name)
        if not path.is_file():
            raise UserError(f"{path} is missing (the manifest lists it): {rebuild}")
        stat = path.stat()
        recorded = manifest.sizes.get(name)
        if recorded is not None and stat.st_size != recorded:
            raise UserError(
                f"{path} is {stat.st_size} bytes, its manifest says {recorded} (truncated or replaced?): {rebuild}"
            )
        if not rehash and cache.get(name) == [stat.st_size, stat.st_mtime_ns, expected]:
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(
                f"{path}: sha256 {actual[:12]}... is not the manifest's {expected[:12]}... (the file or the manifest "
                f"changed after the build): {rebuild}"
            )
        cache[name] = [stat.st_size, stat.st_mtime_ns, expected]
        changed = True
    if changed and not _READ_ONLY.get():
        with contextlib.suppress(OSError):  # a read-only artifact store: verified again next time
            atomic_write_text(cache_path, json.dumps(cache, indent=1) + "\n")


@dataclass(frozen=True)
class Rehashed:
    """One artifact folder re-hashed in full: how many files and bytes, and why it failed (None: it matches)."""

    folder: Path
    files: int
    bytes: int
    error: str | None = None


def rehash_tree(root: str | Path) -> list[Rehashed]:
    """Re-hash every file of every artifact folder under `root` (itself included), trusting no cache.

    What `ltx-verify --rehash` runs: the check that does not rely on size+mtime (docs/design/hash-cache.md).
    A folder that matches gets its `.verified.json` refreshed; one that does not is reported, not changed."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass an artifact folder or a store (e.g. artifacts/)")
    found = []
    for path in sorted(root.rglob(MANIFEST)):
        folder = path.parent
        if any(part.startswith(".") or part.endswith(".partial") for part in folder.relative_to(root).parts):
            continue  # a build in progress or a temp folder, not an artifact
        try:
            manifest = Manifest.read(folder)
            verify_files(folder, manifest, "rebuild it with --force", rehash=True)
        except UserError as exc:
            found.append(Rehashed(folder, 0, 0, str(exc)))
            continue
        size = sum(contained(folder, n).stat().st_size for n in manifest.files)
        found.append(Rehashed(folder, len(manifest.files), size))
    if not found:
        raise UserError(f"{root}: no {MANIFEST} under it; pass an artifact folder or a store (e.g. artifacts/)")
    return found


_READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("store_read_only", default=False)


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Within it, checking artifacts writes nothing, not even the hash cache (`ltx-run --check`)."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


# -- content-addressed weights ------------------------------------------------------------------
#
# Weight files a graph takes as inputs (the DiT's per-block weights) depend on what they are made of
# (source content, LoRAs and strengths, dtype, quantization), not on the shape, layout or variant of
# the graphs that read them, so they live once under <out>/weights/<key>/ and every export manifest
# that uses them names them by key: {"weights": {"key": KEY, "files": [NAME, ...]}} in its graph entry.

WEIGHTS = "weights"
WEIGHTS_FORMAT = 1  # bump when the weight file layout changes: old keys stop matching
_KEY = re.compile(r"^[0-9a-f]{16}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def weights_request(material: dict[str, Any]) -> dict[str, Any]:
    return {"weights_format": WEIGHTS_FORMAT, **material}


def weights_key(material: dict[str, Any]) -> str:
    """The content key of weight files made from `material` (source fingerprints, dtype, quantization...)."""
    return request_key(weights_request(material))


def weights_dir(out: str | Path, key: str) -> Path:
    if not _KEY.match(key):
        raise UserError(f"weights key {key!r} is not a store key (edited by hand?): re-export the artifact")
    return Path(out) / WEIGHTS / key


def store_root(artifact_folder: str | Path) -> Path:
    """The store an exported artifact folder (<out>/<component>/<identity>/<variant>) belongs to."""
    return Path(artifact_folder).parents[2]


def _complete_weights(folder: Path, key: str, *, rehash: bool = False) -> Manifest | None:
    manifest = valid_manifest(folder)
    if manifest is None or manifest.kind != WEIGHTS or manifest.key != key:
        return None
    for name, size in manifest.sizes.items():
        if (folder / name).stat().st_size != size:
            return None
    if rehash:
        try:
            verify_files(folder, manifest, "rebuilding")
        except UserError:
            return None
    return manifest


def ensure_weights(
    out: str | Path, material: dict[str, Any], write: Callable[[Path], list[str]], *, force: bool = False
) -> tuple[str, list[str], bool]:
    """(key, file names, written now) of the weight files made from `material`, written by `write(folder)`
    only when the store lacks them (`force`: also when a file's sha256 no longer matches). They are
    written into a temporary folder and renamed into place with their manifest, under a lock: a reader
    sees all of them or none, and two exports needing the same weights write them once."""
    out = Path(out)
    key = weights_key(material)
    folder = weights_dir(out, key)
    if (found := _complete_weights(folder, key, rehash=force)) is not None:
        return key, sorted(found.files), False
    with file_lock(out / ".locks" / f"weights-{key}.lock"):
        if (found := _complete_weights(folder, key, rehash=force)) is not None:
            return key, sorted(found.files), False  # another process wrote them while this one waited
        folder.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=folder.parent))
        try:
            names = sorted(write(building))
            Manifest(
                kind=WEIGHTS,
                component=str(material.get("component", "")),
                variant="",
                request=weights_request(material),
                io={"files": names},
                files=file_hashes(building, names),
                sizes=file_sizes(building, names),
            ).write(building)
            replace_dir(building, folder)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return key, names, True


def weight_refs(manifest: Manifest) -> list[tuple[str, list[str]]]:
    """(key, file names) of every content-addressed weight set an export manifest names, checked to be
    store keys and plain file names (a manifest never points outside the store)."""
    refs = []
    for graph in manifest.io.get("graphs", {}).values():
        ref = graph.get("weights")
        if not ref:
            continue
        key, names = str(ref.get("key", "")), [str(n) for n in ref.get("files", [])]
        weights_dir(".", key)  # refuses a key that is not one
        bad = [n for n in names if not _NAME.match(n) or n in (".", "..")]
        if bad:
            raise UserError(f"{manifest.component}: weight file name {bad[0]!r} is not a plain file name: re-export it")
        refs.append((key, names))
    return refs


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files (in order) the exported artifact at `folder` binds to its graphs: its
    content-addressed weights in the store it sits in."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    root = store_root(folder)
    return [weights_dir(root, key) / name for key, names in weight_refs(manifest) for name in names]


def weights_bytes(out: str | Path, key: str) -> int | None:
    """Bytes on disk of the weight set `key`, or None when the store lacks it (complete)."""
    folder = weights_dir(out, key)
    manifest = _complete_weights(folder, key) if folder.is_dir() else None
    return None if manifest is None else sum(manifest.sizes.values())


# -- identity and variant -----------------------------------------------------------------------

OPSET = 18  # ai.onnx opset of every exported graph but one
ASCEND_W8A8_OPSET = 16  # the Ascend W8A8 DiT: CANN registers ai.onnx::QuantBatchMatMul for opsets 8-16 only
QUANTIZATION_SCHEMES = ("w8a8",)
DIT_LAYOUTS = ("auto", "whole", "blocks", "split")
# Bump when a graph form changes (inputs, outputs, patches): old artifacts stop matching.
GRAPH_FORM_VERSION = 1
IDENTITY_FIELDS = ("component", "profile", "dtype", "graph_form", "source")
PORTABLE = "portable"  # the label of the default variant: standard ONNX ops, for ATC and ORT alike


@dataclass(frozen=True)
class Variant:
    """How an artifact's graphs are built, for one runtime or another; not what they compute from.

    `npu_ops`: Ascend's fused kernels (ATC only). `ort_fused`: ONNX Runtime's com.microsoft fused
    kernels (ORT only). The rest only the DiT reads: its layout (one graph, a block chain, or `split`:
    the block chain cut at its attention cores, at 1/`ulysses` of the tokens, for sequence parallel),
    and W8A8 quantization of its block linears (with the patterns kept float and SmoothQuant's alpha)."""

    npu_ops: bool = False
    ort_fused: bool = False
    dit_layout: str = "auto"
    ulysses: int = 1
    quantization: str = ""
    quantization_skip: tuple[str, ...] = ()
    smooth_alpha: float | None = None

    @property
    def name(self) -> str:
        """"" (portable), "npu-ops", "ort-fused", each optionally "+w8a8" (the manifest's `variant`)."""
        base = "npu-ops" if self.npu_ops else "ort-fused" if self.ort_fused else ""
        if not self.quantization:
            return base
        return f"{base}+{self.quantization}" if base else self.quantization

    @property
    def label(self) -> str:
        return self.name or PORTABLE

    @property
    def ort_only(self) -> bool:
        """Graphs ATC cannot compile: com.microsoft fused ops, or ORT's MatMulInteger lowering of W8A8."""
        return self.ort_fused or (bool(self.quantization) and not self.npu_ops)

    @property
    def opset(self) -> int:
        return ASCEND_W8A8_OPSET if self.npu_ops and self.quantization else OPSET

    def for_component(self, component: str) -> Variant:
        """What of this variant applies to `component`: everything to the DiT, `npu_ops` to the rest."""
        return self if component == "dit" else Variant(npu_ops=self.npu_ops)

    def check(self) -> None:
        """One line for combinations that cannot be built."""
        if self.npu_ops and self.ort_fused:
            raise UserError("--npu-ops and --ort-fused exclude each other: one graph is for ATC, the other for ORT")
        if self.dit_layout not in DIT_LAYOUTS:
            raise UserError(f"--dit-layout {self.dit_layout}: choose one of {', '.join(DIT_LAYOUTS)}")
        if self.quantization and self.quantization not in QUANTIZATION_SCHEMES:
            raise UserError(f"--quantization {self.quantization}: choose {', '.join(QUANTIZATION_SCHEMES)}")
        if self.smooth_alpha is not None and not (0.0 < self.smooth_alpha < 1.0):
            raise UserError(f"--smooth-alpha {self.smooth_alpha}: choose a value between 0 and 1, e.g. 0.5")
        if self.smooth_alpha is not None and not self.quantization:
            raise UserError("--smooth-alpha smooths activations for quantization: add --quantization w8a8")
        if self.ulysses < 1:
            raise UserError(f"--ulysses {self.ulysses}: must be >= 1")
        if self.ulysses > 1 and self.dit_layout != "split":
            raise UserError(f"--ulysses {self.ulysses} shards the split block chain: add --dit-layout split")

    @classmethod
    def parse(cls, label: str) -> Variant:
        """`--variant LABEL`: portable, npu-ops, ort-fused, w8a8, npu-ops+w8a8, ort-fused+w8a8."""
        base, _, quant = label.strip().partition("+")
        if base in QUANTIZATION_SCHEMES and not quant:
            base, quant = PORTABLE, base
        if base not in (PORTABLE, "npu-ops", "ort-fused") or (quant and quant not in QUANTIZATION_SCHEMES):
            raise UserError(
                f"--variant {label}: choose portable, npu-ops or ort-fused, optionally +w8a8 (e.g. npu-ops+w8a8)"
            )
        return cls(npu_ops=base == "npu-ops", ort_fused=base == "ort-fused", quantization=quant)

    def export_flags(self) -> str:
        """The ltx-export flags that build this variant (for messages that say how to make it)."""
        flags = ["--npu-ops"] * self.npu_ops + ["--ort-fused"] * self.ort_fused
        if self.dit_layout != "auto":
            flags.append(f"--dit-layout {self.dit_layout}")
        if self.dit_layout == "split":
            flags.append(f"--ulysses {self.ulysses}")
        if self.quantization:
            flags.append(f"--quantization {self.quantization}")
            flags += [f"--quantization-skip '{p}'" for p in self.quantization_skip]
            if self.smooth_alpha is not None:
                flags.append(f"--smooth-alpha {self.smooth_alpha:g}")
        return " ".join(flags)


def artifact_request(
    component: str,
    profile: ShapeProfile,
    dtype: torch.dtype,
    source: dict[str, Any],
    variant: Variant,
    shape_fields: tuple[str, ...] = GRAPH_SHAPE_FIELDS,
) -> dict[str, Any]:
    """What an artifact must match: its identity fields and its variant's, flat (the manifest's `request`).
    Its `profile` holds only the `shape_fields` of `profile` (what its graphs' shapes depend on)."""
    variant = variant.for_component(component)
    variant.check()
    request = {
        "component": component,
        "dit_layout": variant.dit_layout if component == "dit" else None,
        "profile": profile.graph_shape(shape_fields),
        "dtype": dtypes.name(dtype),
        "opset": variant.opset,
        "npu_ops": variant.npu_ops,
        "graph_form": GRAPH_FORM_VERSION,
        "source": source,
    }
    if variant.name:  # the portable graph's request carries no variant fields
        request["variant"] = variant.name
    if variant.dit_layout == "split":  # only the split layout has a rank count: other requests keep their keys
        request["ulysses"] = variant.ulysses
    if variant.quantization:
        request["quantization"] = {
            "scheme": variant.quantization,
            "skip": list(variant.quantization_skip),
            "smooth_alpha": variant.smooth_alpha,
        }
    return request


def identity_of(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in IDENTITY_FIELDS}


def variant_of(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k not in IDENTITY_FIELDS}


def built_profile(manifest: Manifest) -> ShapeProfile:
    """The full shape profile an exported artifact was traced at (its sample feeds), recorded beside
    its request: any profile with the same graph shape makes the same graphs."""
    recorded = manifest.extra.get("profile")
    if recorded is None:
        raise UserError(f"{manifest.component}: the manifest records no profile (an older export): re-export it")
    names = {f.name for f in dataclasses.fields(ShapeProfile)}
    return ShapeProfile(**{k: v for k, v in recorded.items() if k in names})


def identity_dir(out: str | Path, request: dict[str, Any]) -> Path:
    """Where every variant of the request's identity lives."""
    name = shape_name(request["profile"])
    return Path(out) / request["component"] / f"{name}-{request['dtype']}-{request_key(identity_of(request))}"


def artifact_dir(out: str | Path, request: dict[str, Any]) -> Path:
    """The exported artifact folder of exactly this request (identity and variant)."""
    label = request.get("variant") or PORTABLE
    return identity_dir(out, request) / f"{label}-{request_key(variant_of(request))[:8]}"


# -- finding an artifact for a backend ---------------------------------------------------------



def valid_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest if it reads and every file it lists is there, else None."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = Manifest.read(folder)
    except UserError:
        return None
    return manifest if manifest.files_present(folder) else None


def compiled_pattern(backend: str, ep: str | None = "cpu", soc: str | None = None, precision: str | None = None) -> str:
    """The glob of a backend's compiled subfolders (its record's folder naming; None: any)."""
    record = backends.find(backend)
    if record is None or record.folder is None:
        raise ValueError(f"compiled_pattern: backend must be ort or om, not {backend!r}")
    return record.folder_name(ep=ep, soc=soc, precision=precision)


def find_compiled(
    folder: Path, backend: str, ep: str | None = "cpu", soc: str | None = None, precision: str | None = None
) -> Path | None:
    """The `ort-<ep>` / `om-<soc>-<precision>` subfolder of an exported artifact compiled from it.

    `ep=None` takes any ORT provider, `soc`/`precision` None any SoC/precision (first by name).
    A subfolder counts only with a readable manifest of the backend's kind, all its files present,
    and a request made from this export (so a leftover from an earlier export does not match).
    """
    folder = Path(folder)
    pattern = compiled_pattern(backend, ep, soc, precision)
    export = valid_manifest(folder)
    for candidate in sorted(p for p in folder.glob(pattern) if p.is_dir()):
        manifest = valid_manifest(candidate)
        if manifest is None or manifest.kind != backends.backend(backend).kind:
            continue
        if export is not None and manifest.request.get("export") != export.request:
            continue
        return candidate
    return None


def _tensor_specs(io: dict[str, Any]) -> dict[str, Any]:
    """Each graph's inputs and outputs (a compiled manifest records its own file names beside them)."""
    return {name: (g.get("inputs"), g.get("outputs")) for name, g in io.get("graphs", {}).items()}


def _unreadable_compiled(folder: Path, pattern: str) -> str | None:
    """Why a compiled subfolder that is there does not count (bad manifest, missing files), if one is."""
    for candidate in sorted(p for p in folder.glob(pattern) if p.is_dir() and (p / MANIFEST).is_file()):
        try:
            manifest = Manifest.read(candidate)
        except UserError as exc:
            return str(exc)
        if not manifest.files_present(candidate):
            missing = [n for n in manifest.files if not (candidate / n).is_file()]
            return f"{candidate} is missing {', '.join(missing)}: rebuild it with --force"
    return None


@dataclass(frozen=True)
class Resolution:
    """Where a request's graphs are for one backend, or why they are not usable."""

    component: str
    backend: str
    folder: Path  # the exported artifact folder (where it is or would be)
    compiled: Path | None = None  # the folder holding the backend's graph files
    graphs: dict[str, Path] = field(default_factory=dict)  # graph name -> file
    io: dict[str, Any] = field(default_factory=dict)  # graph name -> manifest io entry
    variant: str = ""  # the variant's label ("portable", "npu-ops", ...)
    reason: str | None = None
    weights: tuple[Path, ...] = ()  # the content-addressed weight files its graphs bind (DiT blocks), in order

    @property
    def ok(self) -> bool:
        return self.reason is None


def _shown(diff: list[str]) -> str:
    return ", ".join(diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")


def exported_variants(identity: Path) -> list[tuple[Path, Manifest]]:
    """The complete variant folders under an identity folder, by name."""
    found = []
    for folder in sorted(p for p in identity.iterdir() if p.is_dir() and not p.name.endswith(".partial")):
        manifest = valid_manifest(folder)
        if manifest is not None:
            found.append((folder, manifest))
    return found


def _why_not_found(out: Path, request: dict[str, Any]) -> str:
    """A request with no artifact: which variant fields differ from what its identity has, or which
    identity fields differ from the nearest artifact of the same profile and dtype, or plain missing."""
    identity = identity_dir(out, request)
    label = request.get("variant") or PORTABLE
    if identity.is_dir() and (variants := exported_variants(identity)):
        diff, nearest = min(((differences(request, m.request), m) for _, m in variants), key=lambda d: len(d[0]))
        return (
            f"no {label} variant of {identity} (exported: {', '.join(m.variant or PORTABLE for _, m in variants)}; "
            f"{_shown(diff)} differ from {nearest.variant or PORTABLE}'s): export it with ltx-export"
        )
    prefix = identity.name[: identity.name.rindex("-") + 1]
    best: tuple[list[str], Path] | None = None
    for sibling in sorted(identity.parent.glob(prefix + "*")) if identity.parent.is_dir() else ():
        if sibling == identity or not sibling.is_dir():
            continue
        for folder, manifest in exported_variants(sibling):
            diff = differences(request, manifest.request)
            if best is None or len(diff) < len(best[0]):
                best = (diff, folder)
    if best is not None:
        diff, folder = best
        return f"stale: {folder} was exported for another request ({_shown(diff)} differ); re-export with ltx-export"
    return f"missing: no exported artifact at {artifact_dir(out, request)}; run ltx-export"


def resolve(
    request: dict[str, Any],
    out: Path,
    backend: str,
    *,
    ep: str | None = "cpu",
    soc: str | None = None,
    precision: str | None = None,
) -> Resolution:
    """Locate the artifact `request` (an `artifact_request` dict) names under `out`, for `backend`."""
    backends.compiled_backend(backend)  # one line for a name that runs no artifact
    folder = artifact_dir(out, request)
    if not (folder / MANIFEST).is_file():
        reason = _why_not_found(Path(out), request)
        label = request.get("variant") or PORTABLE
        return Resolution(request["component"], backend, folder, variant=label, reason=reason)
    try:
        check_matches(folder, request)
    except UserError as exc:
        return Resolution(request["component"], backend, folder, reason=str(exc).splitlines()[0])
    return resolve_folder(folder, backend, ep=ep, soc=soc, precision=precision)


def resolve_first(requests: list[dict[str, Any]], out: Path, backend: str, **where: Any) -> Resolution:
    """The first of several acceptable requests (variants, preferred first) that resolves; else the
    first one's failure, whose reason is the one reported."""
    failed = None
    for request in requests:
        found = resolve(request, out, backend, **where)
        if found.ok:
            return found
        failed = failed or found
    assert failed is not None, "resolve_first needs at least one request"
    return failed


def resolve_folder(
    folder: Path, backend: str, *, ep: str | None = "cpu", soc: str | None = None, precision: str | None = None
) -> Resolution:
    """The graphs of one exported artifact folder for `backend`, every file checked against its manifest."""
    folder = Path(folder)
    export = Manifest.read(folder)
    label = export.variant or PORTABLE

    def fail(reason: str) -> Resolution:
        return Resolution(export.component, backend, folder, variant=label, reason=reason.splitlines()[0])

    if not export.files_present(folder):
        missing = [n for n in export.files if not (folder / n).is_file()]
        return fail(f"artifact {folder} is missing {', '.join(missing)}: rebuild it with --force")
    record = backends.compiled_backend(backend)
    target = record.hint(ep)
    if record.folder is None:  # onnx: the exported graphs themselves
        compiled, manifest = folder, export
    else:
        compiled = find_compiled(folder, backend, ep=ep, soc=soc, precision=precision)
        if compiled is None:
            broken = _unreadable_compiled(folder, compiled_pattern(backend, ep, soc, precision))
            if broken is not None:
                return fail(broken.replace("--force", f"`ltx-compile {target} --force {folder}`"))
            return fail(f"not compiled for {backend}: run ltx-compile {target} {folder}")
        manifest = Manifest.read(compiled)
        if _tensor_specs(manifest.io) != _tensor_specs(export.io):
            raise UserError(
                f"{compiled / MANIFEST}: its graph inputs/outputs differ from the export's (edited by hand?): "
                f"recompile with `ltx-compile {target} --force {folder}`"
            )
    # What the manifests record is what runs: sizes and sha256 of every file (cached by size and mtime).
    verify_files(folder, export, f"re-export it with `ltx-export --force` (artifact {folder})")
    if compiled != folder:
        verify_files(compiled, manifest, f"recompile it with `ltx-compile {target} --force {folder}`")
    weights = []
    for key, names in weight_refs(export):
        held = weights_dir(store_root(folder), key)
        held_manifest = _complete_weights(held, key) if held.is_dir() else None
        rebuild = f"re-export it with `ltx-export --force` (artifact {folder})"
        if held_manifest is None or set(held_manifest.files) != set(names):
            return fail(f"its weights {held} are missing or incomplete: {rebuild}")
        verify_files(held, held_manifest, rebuild)
        weights += [held / name for name in names]
    graphs, io = {}, {}
    for name, entry in manifest.io["graphs"].items():
        graphs[name] = contained(compiled, entry["file"])  # an om manifest names the .om ATC wrote
        io[name] = entry
        if not graphs[name].is_file():
            return fail(f"incomplete: {graphs[name]} is missing; recompile with --force")
    return Resolution(export.component, backend, folder, compiled, graphs, io, variant=label, weights=tuple(weights))
