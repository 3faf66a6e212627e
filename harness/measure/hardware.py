"""The names of the processor and the device that a measurement ran on, for the label every timing carries."""

from __future__ import annotations

import platform

import torch


def cpu_name() -> str:
    """The processor's model name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """'cuda: <GPU name>' or 'cpu: <processor model>', the label every latency carries."""
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu: {cpu_name()}"
