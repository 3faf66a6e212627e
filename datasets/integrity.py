"""The prepared data is what its manifest says: a digest of every file, recorded by prepare, checked before use.

`datasets.prepare` records each file's size and BLAKE2b digest in manifest.json (`files`), and a
`store_hash` over them and the input's `content_hash`, so editing either one is caught too.
`verify` checks sizes every time (a truncated store is named as such) and digests once per
machine: a digest is cached under ~/.cache/nvan-bench (or $NVAN_CACHE) by the file's path, size,
modification time and inode, so later runs on that machine pay a stat per file. Hashing reads
the whole store once: about 1 GB/s on one core (BLAKE2b), so 2 minutes for MARS's 117 GB raw store
and a fraction of a second for the embedded default's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from datasets.errors import DatasetError

MANIFEST = "manifest.json"
CHUNK = 1 << 24  # bytes read at a time while hashing


def file_digest(path: Path) -> str:
    """BLAKE2b (32 bytes) of the file at `path`, in hex."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(directory: Path) -> dict[str, dict]:
    """{name: {"bytes", "blake2b"}} of every file of a prepared folder but its manifest, by name."""
    return {p.name: {"bytes": p.stat().st_size, "blake2b": file_digest(p)}
            for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != MANIFEST}


def store_hash(content_hash: str, files: dict[str, dict]) -> str:
    """One digest over the input's hash and every file's name, size and digest."""
    digest = hashlib.blake2b(content_hash.encode(), digest_size=32)
    for name, entry in sorted(files.items()):
        digest.update(f"\0{name}\0{entry['bytes']}\0{entry['blake2b']}".encode())
    return f"blake2b:{digest.hexdigest()}"


def verify(directory: Path, manifest: dict, cache: Path | None = None) -> str:
    """The store hash of a prepared folder, after checking its files' sizes and digests against `manifest`.

    DatasetError naming the file for a missing, truncated, grown or altered one, and for a manifest
    whose hashes were edited. Digests already checked on this machine are read from `cache`.
    """
    directory = Path(directory)
    fix = (f"prepare it again (`dvc repro prepare@{directory.name}`, or `python -m datasets.prepare ... --out "
           f"{directory}`); if it lives on a shared filesystem, copy it again from a good source")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("store_hash"), str):
        raise DatasetError(f"{directory / MANIFEST} records no file digests (written by an older datasets.prepare), "
                           f"so its data cannot be checked; {fix}.")
    if store_hash(str(manifest.get("content_hash")), files) != manifest["store_hash"]:
        raise DatasetError(f"{directory / MANIFEST} was edited: its store_hash does not match its content_hash and "
                           f"file digests; {fix}.")
    cached = _load_cache(cache)
    for name, entry in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing from the prepared dataset; {fix}.")
        found = path.stat()
        if found.st_size != entry["bytes"]:
            what = "truncated" if found.st_size < entry["bytes"] else "longer than it was written"
            raise DatasetError(f"{path} is {what}: {found.st_size:,} bytes, the manifest says {entry['bytes']:,}; "
                               f"{fix}.")
        key = f"{path.resolve()}|{found.st_size}|{found.st_mtime_ns}|{found.st_ino}"
        if cached.get(key) == entry["blake2b"]:
            continue
        if file_digest(path) != entry["blake2b"]:
            raise DatasetError(f"{path} does not hold the bytes prepare wrote (its BLAKE2b digest differs from the "
                               f"manifest's): it was altered or corrupted on disk; {fix}.")
        cached[key] = entry["blake2b"]
    _save_cache(cache, cached)
    return manifest["store_hash"]


def default_cache() -> Path:
    """Where this machine keeps the digests it checked: $NVAN_CACHE, else ~/.cache/nvan-bench."""
    return Path(os.environ.get("NVAN_CACHE", Path.home() / ".cache" / "nvan-bench")) / "verified.json"


def _load_cache(cache: Path | None) -> dict[str, str]:
    try:
        found = json.loads((cache or default_cache()).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _save_cache(cache: Path | None, entries: dict[str, str]) -> None:
    path = cache or default_cache()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the digests are checked again next time, nothing is wrong
