"""Run storage (`ray.storage_path`): a folder every node mounts, or a URI of any filesystem pyarrow opens.

Ray Train and Tune resolve `storage_path` with `pyarrow.fs.FileSystem.from_uri`, so the harness
resolves it the same way and reads what they wrote (checkpoints, Tune state, run records) through
the same filesystem: `s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://...` or a local path. A
URI keeps its query (e.g. `?endpoint_override=...`) when joined, as Ray does.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

import pyarrow
import pyarrow.fs as pafs

from harness.errors import UserError
from harness.config import STORAGE_SCHEMES
from harness.io import atomic_path
from harness.redact import redact


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...`, False for a local path."""
    return "://" in str(location)


def absolute(location: str | Path) -> str:
    """A URI unchanged; a local path made absolute against this process's working directory."""
    return str(location) if is_uri(location) else str(Path(location).resolve())


def join(location: str | Path, *parts: str) -> str:
    """`location` with `parts` appended as path components (a URI keeps its query string)."""
    if not is_uri(location):
        return str(Path(location).joinpath(*parts))
    base, _, query = str(location).partition("?")
    joined = posixpath.join(base.rstrip("/"), *parts)
    return f"{joined}?{query}" if query else joined


# pyarrow's S3 options that carry credentials, and the environment variables its default chain reads them from.
_S3_QUERY_CREDENTIALS = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
                         "session_token": "AWS_SESSION_TOKEN"}


def split_credentials(location: str | Path) -> tuple[str, dict[str, str]]:
    """(`location` without credentials, the AWS environment variables that carry them instead) for an s3:// URI
    holding them (s3://KEY:SECRET@bucket/x, ?access_key=...&secret_key=...); anything else unchanged, with {}.

    Ray Tune stores its storage path in its experiment state (tuner.pkl, search_gen_state-*.json) and pickles
    any filesystem object it is given with the keys inside, so a URI's credentials would sit in the bucket
    beside the runs: Ray gets the bare URI, and pyarrow finds the keys in the environment.
    """
    text = str(location)
    if not text.startswith("s3://"):
        return text, {}
    rest, _, query_text = text.removeprefix("s3://").partition("?")
    env = {}
    # A pasted AWS secret often holds an unencoded '/': the userinfo runs to the last '@', as redact() reads it.
    userinfo, at, rest_after = rest.rpartition("@")
    if at and (not re.search(r"[/#]", userinfo) or ":" in re.split(r"[/#]", userinfo, maxsplit=1)[0]):
        key, _, secret = userinfo.partition(":")
        env["AWS_ACCESS_KEY_ID"] = unquote(key)
        if secret:
            env["AWS_SECRET_ACCESS_KEY"] = unquote(secret)
        rest = rest_after
    query = []
    for key, value in parse_qsl(query_text, keep_blank_values=True):
        if key in _S3_QUERY_CREDENTIALS:
            env[_S3_QUERY_CREDENTIALS[key]] = value
        else:
            query.append((key, value))
    if not env:
        return text, {}
    return f"s3://{rest}" + (f"?{urlencode(query, safe=':/')}" if query else ""), env


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for `location`; UserError naming it when pyarrow cannot open it."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return pafs.FileSystem.from_uri(str(location))
    except (pyarrow.ArrowException, OSError, ValueError) as e:
        raise UserError(f"ray.storage_path {redact(location)}: pyarrow cannot open it ({redact(str(e))}); give a folder "
                        f"every node mounts, or a URI of a filesystem pyarrow supports ({', '.join(STORAGE_SCHEMES)}) "
                        f"with its credentials set in the environment of every node") from None


def info(location: str | Path) -> pafs.FileType:
    """What is at `location`: FileType.File, Directory or NotFound."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type


def exists(location: str | Path) -> bool:
    """True if a file or folder is at `location`."""
    return info(location) != pafs.FileType.NotFound


def is_dir(location: str | Path) -> bool:
    """True if `location` is a folder (on an object store: a prefix with objects under it)."""
    return info(location) == pafs.FileType.Directory


def make_dirs(location: str | Path) -> None:
    """Create the folder `location` and its parents (a no-op on object stores that have no folders)."""
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def read_bytes(location: str | Path) -> bytes:
    """The bytes of the file at `location`; FileNotFoundError if there is none."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | Path) -> str:
    """The UTF-8 text of the file at `location`; FileNotFoundError if there is none."""
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write `data` to `location` whole: renamed into place locally; one object PUT on an object store."""
    if not is_uri(location):
        with atomic_path(location) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = resolve(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    # An object becomes visible only when its upload completes, so readers never see half of it.
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str | Path, text: str) -> None:
    """Write `text` to `location` whole (UTF-8), as `write_bytes`."""
    write_bytes(location, text.encode("utf-8"))


def delete(location: str | Path) -> None:
    """Remove the file at `location` if it is there."""
    fs, path = resolve(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def size(location: str | Path) -> int | None:
    """The size in bytes of the file at `location`, None if there is none."""
    fs, path = resolve(location)
    found = fs.get_file_info(path)
    return found.size if found.type == pafs.FileType.File else None


def list_dirs(location: str | Path) -> list[str]:
    """Names of the folders directly under `location` (empty if it does not exist)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(f.path) for f in found if f.type == pafs.FileType.Directory)


def download(location: str | Path, local: Path) -> Path:
    """Copy the folder at `location` into the local folder `local`; return `local`."""
    fs, path = resolve(location)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def relative(location: str | Path, under: str | Path) -> str:
    """The path of `location` relative to the folder `under`; `location` is a local path, a URI, or a path
    on the storage's filesystem as Ray reports it (no scheme)."""
    _, root = resolve(under)
    path = resolve(location)[1] if is_uri(location) else str(location)
    return posixpath.relpath(path, root)


def check_writable(location: str | Path) -> None:
    """UserError, before any training, when runs cannot be written at `location` (a probe file is written and removed)."""
    if not is_uri(location):
        folder = Path(location).resolve()
        probe = folder if folder.exists() else next(p for p in folder.parents if p.exists())
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(f"ray.storage_path {folder} is not writable ({probe} denies writing); choose another")
        return
    fs, path = resolve(location)
    probe = posixpath.join(path, f".nvan-write-probe-{uuid.uuid4().hex}")
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"probe")
        fs.delete_file(probe)
    except (pyarrow.ArrowException, OSError) as e:
        raise UserError(f"ray.storage_path {redact(location)} is not writable ({type(e).__name__}: {redact(str(e))}); check the bucket "
                        f"exists and the credentials in this environment (the same must hold on every node)") from None
