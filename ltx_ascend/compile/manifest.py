"""The manifest beside every artifact: what it is, what it was made from, and for which target.

Export, compile and the runtime speak through it. A request (component, profile, dtype, source
fingerprints, target) hashes to a key; an artifact whose manifest carries the same key is a cache
hit, and one that differs is refused with the fields that differ named.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ltx_ascend.atomic import atomic_write_text
from ltx_ascend.errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_SAMPLES = 16
_SAMPLE_BYTES = 1 << 20
FINGERPRINT_METHOD = (
    f"sha256 over: file size, the safetensors header (keys, dtypes, shapes, offsets, metadata), "
    f"and {_SAMPLES} evenly spaced {_SAMPLE_BYTES >> 20} MiB samples of the tensor data"
)


def fingerprint_file(path: str | Path) -> dict[str, Any]:
    """A fast identity for a weights file: reads ~16 MiB whatever the size (44 GB included).

    A changed header, size or any sampled byte changes it; a change confined to unsampled bytes
    of an identically shaped file would not: the method is recorded with the value.
    """
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
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
    return {"path": str(path.resolve()), "size": size, "sha256_sampled": digest.hexdigest()}


def fingerprint_tree(root: str | Path, patterns: tuple[str, ...] = ("*.json", "*.model", "*.safetensors")) -> dict:
    """Fingerprint of a folder (a Gemma root): every matching file, sorted by relative path."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for pattern in patterns for p in root.rglob(pattern)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(fingerprint_file(path)["sha256_sampled"].encode())
    return {"path": str(root.resolve()), "sha256_sampled": digest.hexdigest()}


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
        return manifest

    def files_present(self, folder: str | Path) -> bool:
        return all((Path(folder) / name).is_file() for name in self.files)


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


def verify_files(folder: str | Path, manifest: Manifest, rebuild: str) -> None:
    """Check every file the manifest records against its size and sha256 before anything reads it.

    A file whose size and mtime match an earlier successful check is not hashed again (the result is
    cached in `.verified.json` beside it, written best-effort: a read-only store re-hashes). `rebuild`
    is the command that makes the artifact again, named in the one-line error."""
    folder = Path(folder)
    cache_path = folder / VERIFIED
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    changed = False
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing (the manifest lists it): {rebuild}")
        stat = path.stat()
        recorded = manifest.sizes.get(name)
        if recorded is not None and stat.st_size != recorded:
            raise UserError(
                f"{path} is {stat.st_size} bytes, its manifest says {recorded} (truncated or replaced?): {rebuild}"
            )
        if cache.get(name) == [stat.st_size, stat.st_mtime_ns, expected]:
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(
                f"{path}: sha256 {actual[:12]}... is not the manifest's {expected[:12]}... (the file or the manifest "
                f"changed after the build): {rebuild}"
            )
        cache[name] = [stat.st_size, stat.st_mtime_ns, expected]
        changed = True
    if changed:
        with contextlib.suppress(OSError):  # a read-only artifact store: verified again next time
            atomic_write_text(cache_path, json.dumps(cache, indent=1) + "\n")
