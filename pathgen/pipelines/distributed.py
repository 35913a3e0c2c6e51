"""One process or many: the torch.distributed plumbing every job shares.

Launched plainly, a job runs as one process and every helper here is a no-op stand-in. Launched by
``torchrun --nproc-per-node N [--nnodes ...] -m pathgen <command> ...`` (WORLD_SIZE, RANK and
LOCAL_RANK set), ``Dist`` joins the process group and:

* training jobs wrap their model in ``DistributedDataParallel`` (``wrap_ddp``), read a disjoint
  shard of the training patients each epoch (``sharded_loader``: ``DistributedSampler``, so
  ``--batch-size`` is per process and the global batch is ``batch_size x world``), average their
  logged losses, take every model-selection decision on rank 0 (``broadcast``) so no two ranks can
  disagree, and write files on rank 0 only;
* ``synthesize-cohort`` uses the same group as a control plane (plan broadcast, stats gather).

Backend: NCCL when the job runs on CUDA devices, gloo otherwise (CPU training, control plane).
"""
from __future__ import annotations

import datetime
import hashlib
import os

import torch
from torch.utils.data import DataLoader, Dataset

from pathgen.data.bags import collate_bags
from pathgen.pipelines.runtime import make_loader, seed_everything


class Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a one-process stand-in."""

    def __init__(self, backend: str | None = None, timeout_h: float = 6.0):
        import torch.distributed as dist

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        self.backend = backend or "gloo"
        if self.active and not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=datetime.timedelta(hours=timeout_h))

    @classmethod
    def for_device(cls, device: torch.device) -> "Dist":
        """NCCL for CUDA jobs (each rank takes GPU ``LOCAL_RANK``), gloo for CPU jobs."""
        return cls(backend="nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA job under torchrun, else ``device``."""
        if device.type == "cuda" and self.active:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def seed_ranks(self, seed: int, epoch: int = 0) -> None:
        """Under torchrun, give each rank its own random streams (noise, dropout, subsampling),
        distinct per resume epoch; a no-op for one process, whose stream stays exactly reproducible."""
        if self.active:
            seed_everything(seed + 1009 * self.rank + 7919 * epoch)

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float, weight: float = 1.0) -> float:
        """Weighted mean of a per-rank scalar over ranks (e.g. a loss averaged over each rank's batches)."""
        if not self.active:
            return float(value)
        pairs = self.gather((float(value) * weight, float(weight)))
        total = sum(w for _, w in pairs)
        return sum(v for v, _ in pairs) / total if total else float("nan")

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.active and self.dist.is_initialized():
            self.dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, dist: Dist, device: torch.device,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` under torchrun, ``module`` itself otherwise.

    DDP broadcasts rank 0's parameters at construction, so every rank starts from the same weights
    whatever its seed, and all-reduces (averages) gradients in backward.
    """
    if not dist.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def sharded_loader(ds: Dataset, batch_size: int, seed: int, dist: Dist, num_workers: int = 0):
    """A shuffling loader over this rank's shard of ``ds`` (bags packed by ``collate_bags``).

    Returns ``(loader, set_epoch)``; call ``set_epoch(epoch)`` before each epoch so shards reshuffle.
    With one process this is a plain seeded shuffling loader. ``DistributedSampler`` pads the last
    shard by repeating patients so every rank runs the same number of steps (DDP needs lockstep).
    """
    if not dist.active:
        return make_loader(ds, batch_size, True, seed, num_workers), lambda epoch: None
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate_bags,
                        num_workers=num_workers, drop_last=False)
    return loader, sampler.set_epoch


def state_digest(module: torch.nn.Module) -> str:
    """SHA-1 of a module's parameters and buffers (ranks of a DDP job must agree on it)."""
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_in_sync(module: torch.nn.Module, dist: Dist, what: str) -> bool:
    """Raise if the ranks' copies of ``module`` differ (a DDP invariant); True when checked."""
    if not dist.active:
        return True
    digests = dist.gather(state_digest(module))
    if len(set(digests)) != 1:
        raise RuntimeError(f"{what}: the {dist.world} ranks ended with different weights ({digests}); "
                           "this is a bug in the distributed training path, please report it")
    return True
