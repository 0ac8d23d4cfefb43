"""Multi-process data parallelism: PyTorch DDP launched with ``torchrun`` (docs/speed.md).

    torchrun --nproc_per_node=2 train.py <the usual arguments>

``train.py`` calls ``init_from_env()`` first: under torchrun (``LOCAL_RANK``/``WORLD_SIZE`` set) it joins
the process group (NCCL on GPUs, gloo on CPU) and pins the process to its GPU. Then:

* ``DATALOADER.TRAIN_X.BATCH_SIZE`` is per process; the global batch is that times the world size.
  Nothing rescales the learning rate: set ``OPTIM.LR`` for the global batch yourself.
* trainers wrap their trainable module with ``wrap_model`` and call it for the differentiable forward;
  batch-level terms use ``trainers._losses.global_batch_mean`` (all_gather with gradient), so 1 process
  with batch 2B and 2 processes with batch B optimise the same objective (tests/test_ddp.py);
* the train loader gets a ``DistributedSampler`` (seeded, shuffled, equal shards); evaluation splits
  the test set into disjoint shards without padding and gathers predictions, so nothing is counted twice;
* rank 0 alone logs, writes checkpoints, TensorBoard events and results.
Without torchrun every helper is a no-op and the single-process path is unchanged.
"""
import inspect
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from fairclip.toolbox.errors import UserError


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def launched_by_torchrun():
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(use_cuda=True):
    """Join the process group described by torchrun's environment; returns ``(rank, world_size)``."""
    if is_distributed() or not launched_by_torchrun():
        return rank(), world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError("LOCAL_RANK={} but only {} GPU(s) are visible; lower torchrun's --nproc_per_node".format(
                local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(local_rank)  # torch.device("cuda") now means this process's GPU
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return rank(), world_size()


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def reseed_for_rank(seed):
    """After the model is built (identically on every rank): give each rank its own random stream for
    data augmentation; rank 0 and single-process runs keep the run's stream."""
    if is_distributed() and rank() > 0 and seed >= 0:
        from fairclip.toolbox import set_random_seed

        set_random_seed(seed + 1000 * rank())


# ---------------------------------------------------------------------------- the model
def wrap_model(module, device):
    """``DistributedDataParallel(module)`` when distributed, else ``module`` itself. Call the returned
    object for the forward whose output the loss differentiates; save and load ``module``."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # No buffer sync per forward: our buffers are constants derived from the text side, equal on every rank
    # (newer torch names the switch forward_sync_buffers, older broadcast_buffers).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=device_ids, **no_sync)


# ---------------------------------------------------------------------------- data
class ShardSampler(Sampler):
    """Rank r's part of ``range(n)``: a contiguous slice, no padding (shards may differ by one)."""

    def __init__(self, n, rank_, world):
        start = n * rank_ // world
        stop = n * (rank_ + 1) // world
        self.indices = list(range(start, stop))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _rebuild(loader, sampler, drop_last, batch_size=None):
    return DataLoader(
        loader.dataset, batch_size=batch_size or loader.batch_size, sampler=sampler,
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=drop_last, persistent_workers=loader.num_workers > 0 and getattr(loader, "persistent_workers", False),
        generator=getattr(loader, "generator", None),  # the workers' base seed stays off the global stream
    )


def train_loader(loader, seed):
    """``loader`` with a shuffled, seeded ``DistributedSampler`` (equal shards, same number of batches on
    every rank: batch-level all_gathers need equal shapes). Unchanged when not distributed."""
    if not is_distributed():
        return loader
    n, world = len(loader.dataset), world_size()
    if n // world < loader.batch_size:
        raise UserError("{} training images cannot fill one batch of {} on each of {} processes; lower "
                        "DATALOADER.TRAIN_X.BATCH_SIZE or the number of processes".format(n, loader.batch_size, world))
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank(), shuffle=True,
                                 seed=max(int(seed), 0), drop_last=True)
    return _rebuild(loader, sampler, drop_last=True)


def eval_loader(loader):
    """``loader`` over this rank's shard of the split (no padding, no duplicates). Unchanged when not distributed."""
    if loader is None or not is_distributed():
        return loader
    return _rebuild(loader, ShardSampler(len(loader.dataset), rank(), world_size()), drop_last=False)


def set_epoch(loader, epoch):
    """Reshuffle a distributed train loader for ``epoch`` (DistributedSampler needs it every epoch)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def all_gather_object(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (a collective call); ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def gather_cat(tensor):
    """Concatenate a CPU tensor of every rank along dim 0 (lengths may differ); itself when not distributed."""
    if not is_distributed():
        return tensor
    parts = [None] * world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts, dim=0)
