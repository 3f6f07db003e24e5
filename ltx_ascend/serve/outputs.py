"""Where finished videos (and uploaded inputs) live: a local or shared folder, or an S3-compatible bucket.

Keys are names we generate (`video_<hex>.mp4`, `input_<hex>.png`); a client string never becomes a key,
and `check_key` refuses anything else, so no key can name a file outside the folder. A video appears
under its key only when it is whole: the folder store renames it into place, S3 publishes an object
only when its upload completes."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ltx_ascend.errors import UserError

_KEY = re.compile(r"^(video|input)_[0-9a-f]{32}(\.[a-z0-9]{1,8})?$")
CHUNK = 1 << 20


def check_key(key: str) -> str:
    """`key` is one of ours (a prefix, 32 hex digits, an extension): never a path, never a client string."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"not an output key of ours: {key!r}")
    return key


class OutputStore(Protocol):
    def put(self, key: str, src_path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def read_bytes(self, key: str) -> bytes: ...
    def size(self, key: str) -> int | None: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def describe(self) -> str: ...


class LocalOutputs:
    """A folder (local, or a shared mount such as NFS for a fleet): atomic rename into place."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / check_key(key)

    def put(self, key: str, src_path: Path) -> None:
        target = self._path(key)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            shutil.copyfile(src_path, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def describe(self) -> str:
        return str(self.folder)


class S3Outputs:
    """An S3-compatible bucket through boto3 (`s3://bucket/prefix`); an object exists only once its
    upload completed, so a reader never sees half a video."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, src_path: Path) -> None:
        self.client.upload_file(str(src_path), self.bucket, self._name(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    def open(self, key: str) -> BinaryIO:
        return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]

    def read_bytes(self, key: str) -> bytes:
        return self.open(key).read()

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._name(key))["ContentLength"])
        except Exception as exc:  # botocore's ClientError for a missing object
            if _is_missing(exc):
                return None
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")


def iter_chunks(handle: BinaryIO) -> Iterator[bytes]:
    """A stored object in 1 MiB pieces (the content endpoint streams it)."""
    try:
        while chunk := handle.read(CHUNK):
            yield chunk
    finally:
        handle.close()


def open_outputs(spec: str | os.PathLike[str]) -> OutputStore:
    """`s3://bucket/prefix` (boto3, credentials and endpoint from its usual environment: AWS_*,
    AWS_ENDPOINT_URL) or a folder."""
    text = str(spec)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise UserError(f"--outputs {text}: name the bucket, e.g. s3://videos/ltx")
        try:
            import boto3
        except ImportError:
            raise UserError(f"--outputs {text}: S3 outputs need boto3; pip install boto3") from None
        return S3Outputs(bucket, prefix, boto3.client("s3"))
    if "://" in text:
        raise UserError(f"--outputs {text}: expected a folder or s3://bucket/prefix")
    return LocalOutputs(text)
