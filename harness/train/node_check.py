"""What each training worker checks on its own node before it trains: the driver's paths hold the same files.

The driver resolves every path against its own working directory and checks it there. On a
multi-node cluster a worker reads the same absolute paths on another machine, where the prepared
data may be missing or stale (another `dvc pull`), the init weights absent, or a local
`ray.storage_path` a different folder than the driver's. Each of those fails here, before any
step, with the node's name, the path and the fix.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from datasets.errors import DatasetError
from datasets.integrity import verify
from harness import storage
from harness.errors import UserError

FIX = ("every node must see the same files at the same absolute path: put them on a filesystem all nodes mount "
       "(NFS, a cluster filesystem), or run `dvc pull` (or `dvc repro prepare@<dataset>`) on each node; see the "
       "README, 'Multi-node clusters'")


class NodeInputError(UserError):
    """A worker's node lacks (or has another version of) what the driver checked."""


def node_name() -> str:
    """This node as a user finds it: host name, IP and Ray node id (when inside Ray)."""
    host = socket.gethostname()
    try:
        import ray

        context = ray.get_runtime_context()
        return f"{host} ({ray.util.get_node_ip_address()}, Ray node {context.get_node_id()[:12]})"
    except Exception:  # outside a Ray worker there is no node id to add
        return host


def check_node(prepared: Path, manifest_hash: str, imagenet_init: Path | None = None,
               storage_probe: str | None = None, store_hash: str | None = None) -> None:
    """NodeInputError unless this node has the prepared dataset with `manifest_hash` and, byte for byte, the files
    of `store_hash` (checked once per node, datasets.integrity), the init weights, and sees the driver's probe file
    in a local ray.storage_path."""
    node = node_name()
    manifest = Path(prepared) / "manifest.json"
    try:
        content = json.loads(manifest.read_text())
        found = content.get("content_hash")
    except (OSError, ValueError) as e:
        raise NodeInputError(f"on node {node}: the prepared dataset {prepared} is not there ({manifest}: "
                             f"{type(e).__name__}); {FIX}") from None
    if found != manifest_hash or (store_hash is not None and content.get("store_hash") != store_hash):
        raise NodeInputError(f"on node {node}: the prepared dataset {prepared} is another version than the "
                             f"driver's (manifest hash {found}, the driver's {manifest_hash}); {FIX}")
    if store_hash is not None:
        try:
            verify(Path(prepared), content)
        except DatasetError as e:
            raise NodeInputError(f"on node {node}: {e}") from None
    if imagenet_init is not None and not Path(imagenet_init).is_file():
        raise NodeInputError(f"on node {node}: train.imagenet_init {imagenet_init} does not exist; {FIX}")
    if storage_probe is not None and not storage.exists(storage_probe):
        raise NodeInputError(
            f"on node {node}: ray.storage_path is a local folder, and the file the driver wrote in it "
            f"({storage_probe}) is not visible here, so this node would keep checkpoints on its own disk; "
            f"use a folder every node mounts, or a URI such as s3://bucket/prefix")
