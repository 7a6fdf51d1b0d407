"""Data parallelism for ``babelflow train``: torch.distributed when started by torchrun.

Every rank takes its share of each step's blocks and gradients are summed with
``all_reduce`` (gloo on CPU, nccl on GPU), so N ranks compute exactly the step one process
computes with the same global batch. (Plain DDP would need ``find_unused_parameters`` for
heads that a rank does not use in a step; the explicit all-reduce keeps an unused head's
gradient at None on every rank, as in one process.)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Dist:
    """torch.distributed when started by torchrun (WORLD_SIZE > 1), else a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def device(self) -> torch.device:
        """This rank's GPU (``LOCAL_RANK``) when there is CUDA, else the CPU."""
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum the ranks' gradients (each rank already divided its loss by the global batch).

        A parameter no rank used this step (another task's head) keeps ``grad = None``,
        exactly as in a single process, so the optimizer leaves it alone there too.
        """
        if self.world == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        # on the parameters' device: nccl reduces CUDA tensors only
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
        dist.all_reduce(used)
        for p, u in zip(params, used.tolist()):
            if u == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
