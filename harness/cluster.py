"""The Ray a job runs on: a local one on loopback or a cluster it joins, and what the workers' processes need."""

from __future__ import annotations

import os
import platform
import signal
import threading
from contextlib import contextmanager

from harness.errors import UserError
from harness.config import RayConfig

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, servers on loopback


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, resources: dict[str, float] | None = None,
                log_to_driver: bool = False, env: dict[str, str] | None = None):
    """Connect to the Ray cluster at `address`, or start a local one on loopback; shut it down on exit. `env` goes
    to every task and actor of the job (storage credentials kept out of the URIs Ray stores).

    A local Ray serves this machine alone, so its GCS, raylet and workers listen on 127.0.0.1
    only. Ray does that in its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read
    by ray_constants at import, so the constant is set too when Ray is already imported).
    Joining a cluster keeps the cluster's own network setup.
    """
    import ray
    import ray._private.ray_constants as ray_constants

    if ray.is_initialized():
        yield
        return
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    local = address is None
    saved = os.environ.get(LOCAL_ONLY), ray_constants.ENABLE_RAY_CLUSTER
    if local:
        os.environ[LOCAL_ONLY], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        # "local" starts a new instance even when another Ray runs on this machine (ray.init()
        # without an address would join that one instead).
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address or "local", num_cpus=num_cpus if local else None,
                 resources=resources if local else None,
                 include_dashboard=False, log_to_driver=log_to_driver,
                 runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENV} | (env or {})})
        if callable(handler) and threading.current_thread() is threading.main_thread():
            # Ray's core installs its own SIGTERM handler in the driver (log and abort): a command that handles
            # SIGTERM itself (harness.preemption) keeps its own.
            signal.signal(signal.SIGTERM, handler)
        yield
    finally:
        ray.shutdown()
        if local:
            ray_constants.ENABLE_RAY_CLUSTER = saved[1]
            if saved[0] is None:
                os.environ.pop(LOCAL_ONLY, None)
            else:
                os.environ[LOCAL_ONLY] = saved[0]


def numerics_env(cpu_isa: str) -> dict[str, str]:
    """Environment for training workers that pins torch's x86 CPU kernels (train.cpu_isa).

    Float sums come out differently with AVX-512 and AVX2 kernels, and 30 epochs from scratch turn
    that rounding into several points of rank-1: pinning AVX2 keeps CPU results the same across x86
    machines that have it. No effect elsewhere (ARM) or on GPU math.
    """
    if cpu_isa == "native" or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def worker_resources(ray_config: RayConfig) -> dict[str, float]:
    """The Ray resources of one training worker: its CPUs, and its GPUs when it trains on one."""
    resources = {"CPU": ray_config.cpus_per_worker}
    if ray_config.use_gpu:
        resources["GPU"] = ray_config.gpus_per_worker
    return resources


def check_resources(ray_config: RayConfig) -> None:
    """Fail fast, with the counts, when the cluster cannot host the workers (never wait on it)."""
    import ray

    have = ray.cluster_resources()
    workers = ray_config.num_workers
    need = {k: workers * v for k, v in worker_resources(ray_config).items()}
    short = {k: (v, have.get(k, 0)) for k, v in need.items() if v > have.get(k, 0)}
    if short:
        detail = ", ".join(f"{v:g} {k} needed, {h:g} in the cluster" for k, (v, h) in short.items())
        raise UserError(
            f"ray.num_workers = {workers} with ray.cpus_per_worker = {ray_config.cpus_per_worker}"
            f"{f' and ray.gpus_per_worker = {ray_config.gpus_per_worker}' if ray_config.use_gpu else ''} "
            f"does not fit: {detail}; lower the worker count or resources per worker, or add nodes"
        )
