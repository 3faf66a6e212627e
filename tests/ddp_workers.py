"""Worker functions for the 2-process gloo tests (spawned processes import them by name)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def spawn(world: int, fn, *args) -> None:
    """Run fn(rank, world, port, *args) in `world` fresh processes joined by a gloo group on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fn, args=(world, port, *args), nprocs=world, join=True)


def _join(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


class Embedder(nn.Module):
    """A feature layer and a classifier, the shape of what the re-ID loss sees."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Linear(6, 5)
        self.classifier = nn.Linear(5, classes, bias=False)

    def forward(self, x):
        feature = self.features(x)
        return feature, self.classifier(feature)


def global_batch(p: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P identities x K samples, identity by identity, as PKSampler lays out a step."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.arange(p).repeat_interleave(k)
    return torch.randn(p * k, 6, generator=generator) + labels[:, None], labels


def loss_worker(rank: int, world: int, port: int, p: int, k: int, out: Path) -> None:
    """This rank's share of the global batch through DDP and reid_loss; saves the loss parts and gradients."""
    from models.losses import batch_hard_triplet, reid_loss

    _join(rank, world, port)
    torch.manual_seed(0)
    model = Embedder(p)
    ddp = DistributedDataParallel(model)
    x, labels = global_batch(p, k)
    share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    features, logits = ddp(x[share])
    loss, parts = reid_loss(features, logits, labels[share])
    loss.backward()
    torch.save({"parts": parts, "local_triplet": batch_hard_triplet(features.detach(), labels[share]),
                "grads": [q.grad.clone() for q in model.parameters()]}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def accumulation_worker(rank: int, world: int, port: int, out: Path) -> None:
    """train_epoch with grad_accum 2 on a DDP model; saves how many gradient all-reduces ran."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from harness.config import TrainConfig
    from harness.train.worker import build_optimizer, train_epoch
    from models.presets import preset_spec
    from models.video_reid import build_model

    _join(rank, world, port)
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(preset_spec("nvan", 4, width=4)))
    reductions = []

    def counting_hook(state, bucket):
        reductions.append(bucket.index())
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, counting_hook)
    generator = torch.Generator().manual_seed(rank)
    loader = [(torch.randint(0, 256, (4, 2, 3, 32, 16), dtype=torch.uint8, generator=generator),
               torch.tensor([0, 0, 1, 1]) + 2 * rank, torch.zeros(4)) for _ in range(4)]
    train = TrainConfig(batch_size=8, k=2, grad_accum=2, lr=1e-3)
    train_epoch(model, loader, build_optimizer(model, train), train, torch.device("cpu"))
    torch.save({"reductions": reductions}, out / f"rank{rank}.pt")
    dist.destroy_process_group()
