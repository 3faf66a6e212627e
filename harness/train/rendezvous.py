"""The workers' torch.distributed rendezvous, bound to one address: loopback on a local Ray, the node's IP on a cluster.

Ray Train's own setup passes `tcp://addr:port` to init_process_group, and torch's TCPStore then
listens on that port on every interface (`*` / `::`), with no authentication, whatever address
it was given. Here rank 0 binds the listening socket itself, to the address Ray chose for its
node (127.0.0.1 on a local Ray, which serves this machine alone), and hands it to the TCPStore
(`master_listen_fd`); the other ranks connect to it as before. Gloo's own connections between
ranks are kept on loopback on a local Ray too (GLOO_SOCKET_IFNAME=lo, in `worker_env`).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend

log = logging.getLogger("harness.train")

_listening: list[socket.socket] = []  # rank 0's bound socket, kept open until the store has taken it


def loopback_env(local: bool) -> dict[str, str]:
    """Environment for training workers: on a local Ray, gloo's connections between ranks stay on loopback."""
    return {"GLOO_SOCKET_IFNAME": "lo"} if local else {}


def _bind() -> tuple[str, int]:
    """On rank 0: a listening socket on this node's Ray address and a free port; return (address, port)."""
    import ray

    address = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, 0))
    listener.listen(128)
    _listening.append(listener)
    return address, listener.getsockname()[1]


def _join(backend: str, world_rank: int, world_size: int, address: str, port: int, timeout_s: int) -> None:
    """Join the process group through a TCPStore at address:port; rank 0 serves it on the socket `_bind` made."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        listener = _listening.pop()
        store = dist.TCPStore(address, port, world_size, is_master=True, timeout=timeout,
                              master_listen_fd=listener.detach())
    else:
        store = dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _BoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        import ray

        backend = backend_config.backend or "gloo"
        address, port = worker_group.execute_single(0, _bind)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _join, backend=backend, world_rank=rank,
                                                   world_size=len(worker_group), address=address, port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])
        log.debug("process group of %d ranks met at %s:%d", len(worker_group), address, port)


@dataclass
class BoundTorchConfig(TorchConfig):
    """TorchConfig whose rendezvous listens on the node's Ray address only (see the module docstring)."""

    @property
    def backend_cls(self):
        return _BoundTorchBackend
