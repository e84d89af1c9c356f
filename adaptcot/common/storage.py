"""Paths that are local directories or cloud URIs (s3://, gs://, and any scheme fsspec knows), through pyarrow.

Every path a stage reads or writes -- pool, bank, run directory, checkpoints -- goes through here, so a job runs
the same with `run_dir: runs/local` and `run_dir: s3://bucket/runs/r1`. Paths stay strings (`pathlib` folds the
`//` of a URI); `join` builds them. Credentials and endpoints come from the environment, as the cloud SDKs read
them (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`, ...), or from URI query options
pyarrow understands (`s3://bucket/x?region=eu-west-1`).

Writes are whole-file: `write_bytes` and `write_table` publish a file only once it is complete (a temporary name,
fsynced, and a rename on a local disk, its directory fsynced after; on an object store, a local temporary file
uploaded when complete: readers never see an object half-done, and a power cut never leaves a renamed empty file).
`create_exclusive` creates a file only if it does not exist (a hard link locally; a conditional PUT on S3), the one
primitive leases (`lease.py`) are built on. There is no append on object stores: callers that journal (the
teacher) write numbered chunk files instead.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_ARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def scheme(path: str) -> str:
    """The URI scheme, "" for a local path (Windows drive letters are not schemes)."""
    head = str(path).split("://", 1)
    return head[0].lower() if len(head) == 2 and len(head[0]) > 1 else ""


def is_remote(path: str) -> bool:
    return scheme(path) not in ("", "file")


def join(base: str, *parts: str) -> str:
    """`base/part/...`; a part that is absolute or a URI replaces what came before (like os.path.join)."""
    out = str(base)
    for part in map(str, parts):
        if scheme(part) or part.startswith("/"):
            out = part
        elif is_remote(out):
            out = out.rstrip("/") + "/" + part.lstrip("/")
        else:
            out = os.path.join(out, part)
    return out


def parent(path: str) -> str:
    if is_remote(path):
        head, rest = str(path).split("://", 1)
        return f"{head}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(path))


def name(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/"))


@functools.lru_cache(maxsize=32)
def _remote_fs(root: str) -> pafs.FileSystem:
    """One filesystem object per scheme + bucket (+ options): S3/GCS clients are costly to make."""
    if scheme(root) in _ARROW_SCHEMES:
        return pafs.FileSystem.from_uri(root)[0]
    import fsspec  # any other scheme fsspec has an implementation for (hf://, az://, memory://, ...)

    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme(root))))


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) of a local path or URI."""
    path = str(path)
    if not is_remote(path):
        local = path[len("file://"):] if path.startswith("file://") else path
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    parts = urlsplit(path)
    fs = _remote_fs(f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else ""))
    if scheme(path) in _ARROW_SCHEMES:
        return fs, f"{parts.netloc}{parts.path}".rstrip("/")
    return fs, path.split("?", 1)[0]


def _uri(path: str, inner: str) -> str:
    """The inner path of `resolve(path)` given back in the caller's form (a URI stays a URI)."""
    if not is_remote(path):
        return inner
    parts = urlsplit(str(path))
    return f"{parts.scheme}://{inner}" if scheme(path) in _ARROW_SCHEMES else inner


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    """A local directory, or a prefix that holds at least one object (object stores have no empty directories)."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        return True
    return is_remote(path) and info.type == pafs.FileType.NotFound and bool(list_files(path, recursive=True))


def makedirs(path: str) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def list_files(directory: str, pattern: str = "*", recursive: bool = False, hidden: bool = False) -> list[str]:
    """Files directly in `directory` (or below it) whose name matches `pattern`, sorted; [] if it does not exist.
    Names starting with "." (temporary files) are left out unless `hidden`."""
    fs, inner = resolve(directory)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [i.path for i in infos if i.type == pafs.FileType.File
             and fnmatch.fnmatch(i.base_name, pattern) and (hidden or not i.base_name.startswith("."))]
    return sorted(_uri(directory, n) for n in names)


def list_dirs(directory: str) -> list[str]:
    """Sub-directory names (prefixes) of `directory`, sorted."""
    fs, inner = resolve(directory)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def _publish(path: str, write) -> None:
    """Run `write(filesystem, target)` so that `path` appears only complete: into a temporary file beside it, then
    renamed; for an object store, into a local temporary file, then uploaded (an S3 stream that is closed after an
    error would publish what it had, and a killed upload publishes nothing)."""
    fs, inner = resolve(path)
    local = pafs.LocalFileSystem()
    if is_remote(path):
        handle, tmp = tempfile.mkstemp(prefix="adaptcot-upload-")
        os.close(handle)
        try:
            write(local, tmp)
            pafs.copy_files(tmp, inner, source_filesystem=local, destination_filesystem=fs)
        finally:
            os.unlink(tmp)
        return
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    tmp = _local_tmp(inner)
    try:
        write(fs, tmp)
        _fsync(tmp)
        os.replace(tmp, inner)
        _fsync(posixpath.dirname(inner))  # the rename itself survives a crash only once the directory is synced
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _local_tmp(inner: str) -> str:
    return posixpath.join(posixpath.dirname(inner), f".{posixpath.basename(inner)}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ExclusiveCreateUnsupported(RuntimeError):
    """This store cannot create a file only-if-absent: a lease cannot be had there (fail closed)."""


def create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` if no file is there: True if this call created it, False if one existed.
    Local disks: a complete temporary file hard-linked to the name (link() fails if the name exists, and a reader
    never sees the file half-written). S3 (and S3-compatible stores): `put_object(IfNoneMatch="*")`. Other stores
    raise `ExclusiveCreateUnsupported`."""
    if not is_remote(path):
        fs, inner = resolve(path)
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        tmp = _local_tmp(inner)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, inner)
            _fsync(posixpath.dirname(inner))
            return True
        except FileExistsError:
            return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if scheme(path) != "s3":
        raise ExclusiveCreateUnsupported(
            f"{path}: adaptcot can take a lease only on a local disk or S3 (conditional PUT); put the bank or output "
            "on one of those")
    return _s3_put_if_absent(path, data)


def _s3_put_if_absent(path: str, data: bytes) -> bool:
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError as e:
        raise ExclusiveCreateUnsupported(f"{path}: a lease on S3 needs boto3 (pip install boto3)") from e
    parts = urlsplit(str(path))
    try:
        boto3.client("s3").put_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"), Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise


def write_bytes(path: str, data: bytes) -> None:
    def write(fs, target):
        with fs.open_output_stream(target) as f:
            f.write(data)

    _publish(path, write)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_table(table: pa.Table, path: str) -> None:
    """A Parquet file, published whole."""
    _publish(path, lambda fs, target: pq.write_table(table, target, filesystem=fs))


def read_table(path: str, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """One Parquet file, or every Parquet file in a directory (read as one dataset, with `schema` if given)."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.File:
        return pq.read_table(inner, columns=columns, filesystem=fs, schema=schema)
    return dataset(list_files(path, "*.parquet"), schema).to_table(columns=columns)


def dataset(files: list[str], schema: pa.Schema | None = None) -> pads.Dataset:
    """A Parquet dataset over these files (all on one filesystem); an empty list gives an empty dataset."""
    if not files:
        return pads.dataset([], schema=schema or pa.schema([]), format="parquet")
    fs, _ = resolve(files[0])
    return pads.dataset([resolve(f)[1] for f in files], schema=schema, format="parquet", filesystem=fs)


def upload(local_file: str | Path, path: str) -> None:
    """Copy a complete local file to `path` (a URI or a local path), published whole."""
    fs, inner = resolve(path)
    if is_remote(path):
        pafs.copy_files(str(local_file), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return
    _publish(path, lambda local, target: pafs.copy_files(str(local_file), target, source_filesystem=local,
                                                         destination_filesystem=local))


def ray_dataset(files: list[str], columns: list[str] | None = None, num_cpus: float = 0.25):
    """A Ray Data dataset over Parquet files. The bank's `student=.../grader=...` directories are not read as Hive
    partitions: that would overwrite the `student` column with the directory's slug."""
    import ray

    return ray.data.read_parquet(files, columns=columns, num_cpus=num_cpus, partitioning=None)


def remove(path: str) -> None:
    fs, inner = resolve(path)
    fs.delete_file(inner)


def remove_tree(path: str) -> None:
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def local_dir(path: str, what: str) -> Path:
    """A path that must be on this machine's disk (a model vLLM loads, a sandbox's files): else a clear error."""
    if is_remote(path):
        raise ValueError(f"{what} must be a local path, not {path}")
    return Path(path)


def row_count(files: list[str]) -> int:
    """Rows in these Parquet files, from their footers (no data is read)."""
    total = 0
    for path in files:
        fs, inner = resolve(path)
        with fs.open_input_file(inner) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def upload_tree(local_dir: str | Path, path: str) -> None:
    """Copy a local directory (recursively) to `path`, a URI or a local path."""
    fs, inner = resolve(path)
    pafs.copy_files(str(local_dir), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
