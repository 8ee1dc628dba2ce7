"""Where results live: a local (or shared) folder, or any object store ``pyarrow.fs`` knows.

A *location* is a plain string everywhere in the tool, so it travels through specs, Ray and
the job store unchanged: an absolute local path, or a URI (``s3://bucket/prefix``,
``gs://``, ``abfs://``, ``hdfs://``). Local paths are handled with the standard library
exactly as before this module existed (atomic writes by rename); URIs through a
``pyarrow.fs`` filesystem built once per process from the standard environment.

Credentials never sit in a location: a URI carrying a user name, a password or a secret
query parameter is refused (and :func:`redact` blanks them in any text that is shown). S3
and S3-compatible stores (MinIO, moto) are configured by ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
and ``AWS_ENDPOINT_URL``; the other stores by their own SDK's environment.

On an object store a file is written with one PUT when its stream closes: a reader sees the
whole old object or the whole new one, never a part (the same guarantee :mod:`s2ap.io`
gives locally by renaming).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from s2ap.errors import ConfigError
from s2ap.io import atomic_write

# Schemes pyarrow.fs opens; "file://" is a local path.
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")
# Query parameters that carry secrets (pyarrow reads access_key / secret_key from S3 URIs,
# account_key / sas tokens from abfs ones): refused in a location, blanked in text.
_SECRET = re.compile(r"key|secret|token|password|passwd|sig|credential|sas", re.I)
_URI_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*)://([^/\s@'\"]*@)?([^\s'\"?]*)(\?[^\s'\"]*)?", re.I)
PROBE_TIMEOUT_S = 5.0


def is_uri(where: str | Path) -> bool:
    return "://" in str(where)


def is_remote(where: str | Path) -> bool:
    """An object store (or HDFS): anything but a local path or a ``file://`` URI."""
    return is_uri(where) and not str(where).lower().startswith("file://")


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it blanked (user info, secret query
    parameters): what the tool logs and shows instead of the raw text."""

    def blank(m: re.Match[str]) -> str:
        scheme, user, rest, query = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if query:
            pairs = [f"{k}=***" if _SECRET.search(k) else f"{k}={v}" for k, v in parse_qsl(query[1:], True)]
            query = "?" + "&".join(pairs)
        return f"{scheme}://{'***@' if user else ''}{rest}{query}"

    return _URI_IN_TEXT.sub(blank, text)


class Location(str):
    """A location parsed where it entered (:func:`check`): a normalised URI without
    credentials or an absolute local path. It is a ``str`` everywhere else; :func:`check`
    passes one through untouched, so nothing downstream validates it again."""

    __slots__ = ()


def check(where: str | Path, field: str) -> Location:
    """A location as the tool keeps it: a URI checked (known scheme, no credentials) and
    normalised, a local path made absolute. Bad input is a :class:`ConfigError` on ``field``."""
    if isinstance(where, Location):
        return where
    return Location(_parse(str(where), field))


def _parse(text: str, field: str) -> str:
    if not text:
        raise ConfigError(field, "expected a folder path or a URI like s3://bucket/prefix, got ''")
    if not is_uri(text):
        return str(Path(text).expanduser().resolve())
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            field,
            f"unknown storage scheme {scheme + '://'!r} in {redact(text)!r}: expected a folder or a URI "
            f"with one of {', '.join(s + '://' for s in SCHEMES)}",
        )
    # abfs names its container as user info (abfs://container@account.dfs.core.windows.net):
    # that is allowed there, a password never.
    container_form = scheme in ("abfs", "abfss") and parts.password is None
    if parts.password or ("@" in parts.netloc and not container_form):
        raise ConfigError(
            field,
            f"credentials in the URI are refused ({redact(text)!r}): give them in the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the store's own variables)",
        )
    secret = [k for k, _ in parse_qsl(parts.query, True) if _SECRET.search(k)]
    if secret:
        raise ConfigError(
            field,
            f"credentials in the URI are refused (parameter {secret[0]!r} in {redact(text)!r}): "
            "give them in the environment",
        )
    if scheme == "file":
        return str(Path(parts.path).expanduser().resolve())
    if scheme != "hdfs" and scheme != "viewfs" and not parts.netloc:
        raise ConfigError(field, f"expected {scheme}://BUCKET/PREFIX, got {redact(text)!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}" + (f"?{parts.query}" if parts.query else "")


# --------------------------------------------------------------------------- filesystems


def _split(uri: str) -> tuple[str, str, str]:
    """(root, path inside the filesystem, query) of a checked URI: the root names the
    filesystem (``s3://``, ``hdfs://host:port``), the path is what pyarrow's calls take."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("hdfs", "viewfs"):
        return f"{scheme}://{parts.netloc}", parts.path or "/", parts.query
    if "@" in parts.netloc:  # abfs://container@account.dfs.core.windows.net/path
        container, host = parts.netloc.split("@", 1)
        return f"{scheme}://{host}", f"{container}{parts.path}".rstrip("/"), parts.query
    return f"{scheme}://", f"{parts.netloc}{parts.path}".rstrip("/"), parts.query


def _s3_options(timeout: float | None = None) -> dict[str, Any]:
    """S3 options from the standard environment; credentials stay with the AWS SDK's own
    chain (environment, profile, instance role), so a pickled filesystem never holds them."""
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            opts["scheme"] = "http"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    elif endpoint:
        opts["region"] = "us-east-1"  # S3-compatible stores mostly ignore it
    if timeout is not None:
        opts.update(
            connect_timeout=timeout,
            request_timeout=timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        )
    return opts


def _build(root: str, query: str, timeout: float | None = None) -> pafs.FileSystem:
    if root == "s3://":
        opts = _s3_options(timeout)
        if "region" not in opts:
            opts["region"] = _s3_region(query)
        return pafs.S3FileSystem(**opts)
    scheme, _, host = root.partition("://")
    if scheme in ("hdfs", "viewfs"):
        where = f"{root}/"
    else:  # abfs's account host, or a bucket placeholder (gs://placeholder)
        where = f"{scheme}://placeholder@{host}/" if host else f"{root}placeholder"
    fs, _ = pafs.FileSystem.from_uri(where + (f"?{query}" if query else ""))
    return fs


def _s3_region(query: str) -> str:
    for k, v in parse_qsl(query):
        if k == "region":
            return v
    return "us-east-1"


@functools.lru_cache(maxsize=16)
def _cached(root: str, query: str, env: tuple[str | None, ...]) -> pafs.FileSystem:
    return _build(root, query)


_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def locate(where: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it of a URI (built once per process and
    environment); a local path is on the local filesystem."""
    if not is_remote(where):
        return pafs.LocalFileSystem(), str(Path(check(where, "storage")))
    root, path, query = _split(where)
    return _cached(root, query, tuple(os.environ.get(k) for k in _ENV_KEYS)), path


def from_fs_path(base: str, fs_path: str) -> str:
    """The location of ``fs_path`` (a path inside ``base``'s filesystem, as Ray reports a
    checkpoint's) in ``base``'s terms."""
    if not is_remote(base):
        return fs_path
    root, _, query = _split(base)
    inner = fs_path.lstrip("/")
    if root.endswith("://"):
        out = root + inner
    elif urlsplit(base).scheme.lower() in ("hdfs", "viewfs"):
        out = f"{root}/{inner}"
    else:  # the container is the first part of the path: container@account
        container, _, rest = inner.partition("/")
        scheme, _, host = root.partition("://")
        out = f"{scheme}://{container}@{host}/{rest}".rstrip("/")
    return f"{out}?{query}" if query else out


# --------------------------------------------------------------------------- paths


def join(where: str | Path, *parts: str) -> str:
    if not is_remote(where):
        return str(Path(where).joinpath(*parts))
    base, _, query = str(where).partition("?")
    out = "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return f"{out}?{query}" if query else out


def name(where: str | Path) -> str:
    return str(where).partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def parent(where: str | Path) -> str:
    if not is_remote(where):
        return str(Path(where).parent)
    base, _, query = str(where).partition("?")
    out = base.rstrip("/").rsplit("/", 1)[0]
    return f"{out}?{query}" if query else out


# --------------------------------------------------------------------------- files


def exists(where: str | Path) -> bool:
    if not is_remote(where):
        return Path(where).exists()
    fs, path = locate(str(where))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(where: str | Path) -> bool:
    if not is_remote(where):
        return Path(where).is_file()
    fs, path = locate(str(where))
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(where: str | Path) -> bool:
    if not is_remote(where):
        return Path(where).is_dir()
    fs, path = locate(str(where))
    return fs.get_file_info(path).type == pafs.FileType.Directory


def size(where: str | Path) -> int:
    if not is_remote(where):
        return Path(where).stat().st_size
    fs, path = locate(str(where))
    return int(fs.get_file_info(path).size or 0)


def read_bytes(where: str | Path) -> bytes:
    """The whole file; FileNotFoundError when it does not exist."""
    if not is_remote(where):
        return Path(where).read_bytes()
    fs, path = locate(str(where))
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except OSError as exc:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(redact(str(where))) from None
        raise OSError(redact(str(exc))) from None


def write_bytes(where: str | Path, data: bytes) -> str:
    """Write a whole file: locally by rename, on an object store with one PUT."""
    if not is_remote(where):
        return str(atomic_write(where, lambda tmp: tmp.write_bytes(data)))
    fs, path = locate(str(where))
    with fs.open_output_stream(path) as f:
        f.write(data)
    return str(where)


def read_text(where: str | Path) -> str:
    return read_bytes(where).decode()


def write_text(where: str | Path, text: str) -> str:
    return write_bytes(where, text.encode())


def read_json(where: str | Path) -> Any:
    return json.loads(read_text(where))


def write_json(where: str | Path, data: Any) -> str:
    return write_text(where, json.dumps(data, default=str))


def append_line(where: str | Path, line: str) -> None:
    """Append one line. Object stores cannot append: the object is read and written whole
    again, which is right for the one writer a note has (a trial's rank 0)."""
    if not is_remote(where):
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        with open(where, "a") as f:
            f.write(line + "\n")
        return
    try:
        old = read_bytes(where)
    except FileNotFoundError:
        old = b""
    write_bytes(where, old + line.encode() + b"\n")


def delete(where: str | Path) -> None:
    """Remove a file; nothing when it is absent."""
    if not is_remote(where):
        Path(where).unlink(missing_ok=True)
        return
    fs, path = locate(str(where))
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def list_dir(where: str | Path) -> list[str]:
    """The names directly inside a folder (empty when it does not exist), sorted."""
    if not is_remote(where):
        folder = Path(where)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = locate(str(where))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def open_input(where: str | Path) -> IO[bytes]:
    """An open binary stream of a file, read as it is consumed (downloads, Parquet); the
    caller closes it (``with storage.open_input(x) as f``). FileNotFoundError when absent."""
    if not is_remote(where):
        return open(where, "rb")
    fs, path = locate(str(where))
    try:
        return fs.open_input_file(path)  # type: ignore[return-value]
    except OSError:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(redact(str(where))) from None
        raise


def version(where: str | Path) -> str | None:
    """``"<mtime_ns>:<size>"`` of a file, None when it does not exist: changes whenever the
    file is replaced."""
    if not is_remote(where):
        try:
            st = Path(where).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_mtime_ns}:{st.st_size}"
    fs, path = locate(str(where))
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return f"{info.mtime_ns}:{info.size}"


def read_table(where: str | Path, columns: list[str] | None = None) -> pa.Table:
    if not is_remote(where):
        return pq.read_table(where, columns=columns)
    fs, path = locate(str(where))
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_schema(where: str | Path) -> pa.Schema:
    if not is_remote(where):
        return pq.read_schema(where)
    fs, path = locate(str(where))
    with fs.open_input_file(path) as f:
        return pq.read_schema(f)


def write_table(table: pa.Table, where: str | Path) -> str:
    """Write a Parquet file whole: locally by rename, on an object store with one upload."""
    if not is_remote(where):
        return str(atomic_write(where, lambda tmp: pq.write_table(table, tmp)))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return write_bytes(where, sink.getvalue().to_pybytes())


# --------------------------------------------------------------------------- probing


def probe(where: str, field: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check, quickly, that a remote location can be used: its store answers and its bucket
    (container, top folder) exists. A local path is always fine (it is created on demand).
    Bad news is a :class:`ConfigError` on ``field`` naming the location (without secrets)."""
    if not is_remote(where):
        return
    root, path, query = _split(where)
    shown = redact(where)
    try:
        fs = _build(root, query, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a missing driver (HDFS), a bad option
        raise ConfigError(field, f"cannot open {shown!r}: {_reason(exc)}") from None
    hdfs = urlsplit(where).scheme.lower() in ("hdfs", "viewfs")
    bucket = "/" if hdfs else path.split("/", 1)[0]
    box: list[Any] = []
    worker = threading.Thread(target=lambda: box.append(_info(fs, bucket)), daemon=True)
    worker.start()
    worker.join(timeout * 2)
    if not box:
        raise ConfigError(field, f"the store of {shown!r} did not answer within {timeout * 2:g} s")
    result = box[0]
    if isinstance(result, BaseException):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        at = f" at endpoint {redact(endpoint)}" if endpoint and root == "s3://" else ""
        raise ConfigError(field, f"cannot reach the store of {shown!r}{at}: {_reason(result)}")
    if result.type == pafs.FileType.NotFound:
        raise ConfigError(field, f"bucket {bucket!r} of {shown!r} does not exist")


def _info(fs: pafs.FileSystem, path: str) -> Any:
    try:
        return fs.get_file_info(path)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        return exc


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact(lines[-1] if lines else type(exc).__name__)[:300]
