"""Output roots: a local path or s3://bucket/prefix, through one pyarrow.fs layer.

S3-compatible endpoints are configured with the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`).
JSON manifests are written atomically: a temporary file renamed into place locally, a
single PUT on S3, so a crash never leaves half a manifest.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kakugo.errors import StorageError


def _s3_filesystem() -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # Fail fast instead of retrying for minutes when the endpoint is down.
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    kwargs["connect_timeout"] = 5
    kwargs["request_timeout"] = 30
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"output root {uri!r} has no bucket name (s3://BUCKET/prefix)")
        return _s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if "://" in uri:
        raise StorageError(f"output root {uri!r}: only local paths and s3:// URIs are supported")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


COPY_CHUNK = 8 << 20  # bytes per read while a file is copied
# Written last into a folder copied whole (a model): a folder without it is a cut copy.
COMPLETE = "_COMPLETE"


def is_complete_dir(path: Path) -> bool:
    """A local folder that a copy finished (download_dir wrote its marker last)."""
    return (path / COMPLETE).is_file()


class _RandomAccess(io.RawIOBase):
    """A pyarrow random-access file as a raw Python stream."""

    def __init__(self, native: Any):
        self.native = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.native.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.native.seek(offset, whence)

    def tell(self) -> int:
        return self.native.tell()

    def close(self) -> None:
        self.native.close()
        super().close()


class Storage:
    """A root folder; every path below is relative to it, with '/' separators."""

    def __init__(self, root: str):
        # local roots are made absolute: workers on other processes/nodes resolve them too
        self.root = root.rstrip("/") if root.startswith("s3://") else \
            str(Path(root).expanduser().resolve())
        self.fs, self.base = filesystem_for(root)
        self.is_s3 = isinstance(self.fs, pafs.S3FileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # -- paths
    def path(self, *parts: str) -> str:
        """Path inside the filesystem (for pyarrow and Ray Data with `filesystem=`)."""
        rel = posixpath.join(*parts) if parts else ""
        return posixpath.join(self.base, rel) if rel else self.base

    def uri(self, *parts: str) -> str:
        rel = posixpath.join(*parts) if parts else ""
        return f"{self.root}/{rel}" if rel else self.root

    def child(self, *parts: str) -> Storage:
        return Storage(self.uri(*parts))

    def _wrap(self, action: str, rel: str, exc: Exception) -> StorageError:
        where = self.uri(rel) if rel else self.root
        return StorageError(f"storage error while {action} {where}: {exc}")

    # -- checks
    def check_writable(self) -> None:
        """Fail early and clearly when the root cannot be written (bucket, credentials, perms)."""
        if self.is_s3:
            bucket = self.base.split("/", 1)[0]
            try:
                info = self.fs.get_file_info(bucket)
            except OSError as exc:
                raise self._wrap("checking bucket of", "", exc) from None
            if info.type == pafs.FileType.NotFound:
                raise StorageError(f"S3 bucket {bucket!r} does not exist (output root {self.root})")
        probe = f"_write_probe_{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"")
            self.delete(probe)
        except StorageError as exc:
            raise StorageError(f"output root {self.root} is not writable: {exc}") from None

    # -- files
    def exists(self, rel: str) -> bool:
        try:
            return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound
        except OSError as exc:
            raise self._wrap("checking", rel, exc) from None

    def list(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Relative paths of files below `rel` (empty when it does not exist)."""
        base = self.path(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive,
                                                            allow_not_found=True))
        except OSError as exc:
            raise self._wrap("listing", rel, exc) from None
        out = []
        for info in infos:
            if info.type == pafs.FileType.File:
                out.append(posixpath.relpath(info.path, self.base))
        return sorted(out)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object atomically (temp + rename locally; one PUT on S3)."""
        target = self.path(rel)
        try:
            if self.is_s3:
                with self.fs.open_output_stream(target) as f:
                    f.write(data)
                return
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, target)
        except OSError as exc:
            raise self._wrap("writing", rel, exc) from None

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.uri(rel)} does not exist") from None
        except OSError as exc:
            raise self._wrap("reading", rel, exc) from None

    def write_json(self, rel: str, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str)
        self.write_bytes(rel, data.encode("utf-8") + b"\n")

    def read_json(self, rel: str, default: Any = ...) -> Any:
        if default is not ... and not self.exists(rel):
            return default
        return json.loads(self.read_bytes(rel).decode("utf-8"))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def delete(self, rel: str) -> None:
        target = self.path(rel)
        try:
            info = self.fs.get_file_info(target)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(target)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(target)
        except OSError as exc:
            raise self._wrap("deleting", rel, exc) from None

    # -- tables
    def write_parquet(self, rel: str, table: pa.Table) -> None:
        """Write one parquet file atomically (same rules as write_bytes)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_parquet(self, rel: str) -> pa.Table:
        try:
            return pq.read_table(self.path(rel), filesystem=self.fs)
        except FileNotFoundError:
            raise StorageError(f"{self.uri(rel)} does not exist") from None
        except OSError as exc:
            raise self._wrap("reading", rel, exc) from None

    def ray_dataset(self, rel: str):
        """A Ray Dataset of the parquet files below `rel` (hive partitions become columns).

        Read with Ray Data's first parquet datasource: its ParquetDatasourceV2 (the default
        in this Ray) lists files through a pool of footer-reader actors started for every
        read, which costs ~8 s per read on a small cluster and minutes per step across
        nodes, for folders our steps read several times each."""
        import ray
        from ray.data.context import DataContext

        context = DataContext.get_current()
        previous, context.use_datasource_v2 = context.use_datasource_v2, False
        try:  # the choice is made when the read is planned, so it is undone right after
            return ray.data.read_parquet(self.path(rel), filesystem=self.fs)
        finally:
            context.use_datasource_v2 = previous

    # -- folders
    def download_dir(self, rel: str, target: Path) -> None:
        """Copy every file below `rel` into a local folder (e.g. a model from S3), each as
        a stream. A key that would land outside `target` (`..` segments, an absolute
        path) is refused before anything is written."""
        files = self.list(rel, recursive=True)
        if not files:
            raise StorageError(f"{self.uri(rel)} is empty or does not exist")
        prefix = posixpath.normpath(rel) if rel else ""
        root = target.resolve()
        copies = []
        for name in files:
            if posixpath.basename(name) == COMPLETE:  # the source's own: ours comes last
                continue
            local = (root / (posixpath.relpath(name, prefix) if prefix else name)).resolve()
            if not local.is_relative_to(root):
                raise StorageError(f"{self.uri(name)}: the key leads outside {target} "
                                   "(a '..' segment or an absolute path); nothing copied")
            copies.append((name, local))
        (root / COMPLETE).unlink(missing_ok=True)
        for name, local in copies:
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self.fs.open_input_stream(self.path(name)) as src, \
                        local.open("wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_CHUNK)
            except OSError as exc:
                raise self._wrap("reading", name, exc) from None
        (root / COMPLETE).write_text(f"{len(copies)} files from {self.uri(rel)}\n")

    def upload_dir(self, source: Path, rel: str) -> None:
        """Copy every file below a local folder to `rel`, each as a stream, and then the
        folder's completion marker (`is_complete`): a copy cut short has none."""
        self.delete(posixpath.join(rel, COMPLETE))
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != COMPLETE)
        for path in files:
            name = posixpath.join(rel, path.relative_to(source).as_posix())
            target = self.path(name)
            try:
                if not self.is_s3:
                    self.fs.create_dir(posixpath.dirname(target), recursive=True)
                with path.open("rb") as src, self.fs.open_output_stream(target) as dst:
                    shutil.copyfileobj(src, dst, COPY_CHUNK)
            except OSError as exc:
                raise self._wrap("writing", name, exc) from None
        self.write_text(posixpath.join(rel, COMPLETE), f"{len(files)} files\n")

    def open_reader(self, rel: str) -> io.BufferedReader:
        """A file as a seekable binary reader (io.BufferedIOBase, what libraries that hash
        and then send a file ask for), read from the store as it goes."""
        try:
            return io.BufferedReader(_RandomAccess(self.fs.open_input_file(self.path(rel))),
                                     COPY_CHUNK)
        except OSError as exc:
            raise self._wrap("reading", rel, exc) from None

    def is_complete(self, rel: str) -> bool:
        """Whether a folder copied with upload_dir was copied whole."""
        return self.exists(posixpath.join(rel, COMPLETE))
