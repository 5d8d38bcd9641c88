"""A replica's ranks as a TP x EP grid, and the torch.distributed groups that join them.

Rank r sits at tp_rank = r % tp, slice = r // tp: the ranks of one slice split the
attention heads and the vocabulary (a TP group); the ranks with the same tp_rank split
the experts (an EP group). With `experts_across_all_ranks` the experts are split over
every rank of the replica instead (vLLM's expert parallelism: EP reuses the TP ranks), so
TP=8 with EP over all ranks holds 1/8 of everything on each GPU. The model's
`ParallelContext` is built here with real groups: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import torch.distributed as dist

from oss_serve.workers.model.parallel import ParallelContext


@dataclass(frozen=True)
class ReplicaTopology:
    tensor_parallel_size: int = 1
    expert_parallel_size: int = 1
    experts_across_all_ranks: bool = False

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "expert_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.expert_parallel_size

    @property
    def expert_shards(self) -> int:
        """How many ways the experts are split."""
        return self.world_size if self.experts_across_all_ranks else self.expert_parallel_size

    def tp_rank(self, rank: int) -> int:
        self._check(rank)
        return rank % self.tensor_parallel_size

    def ep_rank(self, rank: int) -> int:
        self._check(rank)
        return rank if self.experts_across_all_ranks else rank // self.tensor_parallel_size

    def tp_groups(self) -> list[list[int]]:
        tp = self.tensor_parallel_size
        return [list(range(s * tp, (s + 1) * tp)) for s in range(self.expert_parallel_size)]

    def ep_groups(self) -> list[list[int]]:
        if self.experts_across_all_ranks:
            return [list(range(self.world_size))]
        tp = self.tensor_parallel_size
        return [[s * tp + t for s in range(self.expert_parallel_size)] for t in range(tp)]

    def describe(self, rank: int) -> str:
        return f"rank {rank} (tp {self.tp_rank(rank)}, ep {self.ep_rank(rank)})"

    def _check(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def free_port(host: str = "") -> int:
    """A TCP port free on this node right now (rank 0 hosts the rendezvous on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def init_process_group(
    *,
    backend: str,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    timeout_s: float,
) -> None:
    """Join the replica's process group (rendezvous over TCP at rank 0's address)."""
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def build_parallel_context(topology: ReplicaTopology, rank: int) -> ParallelContext:
    """This rank's ParallelContext over real groups (None = the whole world group).

    Every rank creates every group in the same order, as torch.distributed requires.
    """
    world = topology.world_size
    tp_group = _my_group(topology.tp_groups(), rank, world)
    ep_group = _my_group(topology.ep_groups(), rank, world)
    return ParallelContext(
        tp_rank=topology.tp_rank(rank),
        tp_size=topology.tensor_parallel_size,
        ep_rank=topology.ep_rank(rank),
        ep_size=topology.expert_shards,
        tp_group=tp_group,
        ep_group=ep_group,
    )


def _my_group(groups: list[list[int]], rank: int, world_size: int) -> object | None:
    if len(groups) == 1 and len(groups[0]) == world_size:
        return None  # the default group already is this one
    mine = None
    for ranks in groups:
        group = dist.new_group(ranks) if len(ranks) > 1 else None
        if rank in ranks:
            mine = group
    return mine


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
