"""The communication-volume table counts what the model's collectives really move."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from oss_serve.benchmarks.comm_volume import markdown, rows, step_traffic
from oss_serve.workers.model.attention_metadata import AttentionMetadata
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.parallel import ParallelContext
from oss_serve.workers.model.weights import init_random_weights

pytestmark = pytest.mark.unit
CONFIG = PRESETS["gpt-oss-tiny"].with_(vocab_size=1000, num_key_value_heads=4)


@dataclass
class CountingContext(ParallelContext):
    """Rank 0 of a TP/EP group whose collectives record their tensors instead of talking."""

    all_reduce_bytes: list[int] = field(default_factory=list)
    gathered_bytes: list[int] = field(default_factory=list)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.tp_size > 1:
            self.all_reduce_bytes.append(tensor.numel() * tensor.element_size())
        return tensor

    def expert_all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.ep_size > 1:
            self.all_reduce_bytes.append(tensor.numel() * tensor.element_size())
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        if self.tp_size == 1:
            return tensor
        self.gathered_bytes.append((self.tp_size - 1) * tensor.numel() * tensor.element_size())
        return torch.cat([tensor] * self.tp_size, dim=dim)


@pytest.mark.parametrize(("tp", "layout"), [(1, "tp"), (2, "tp"), (2, "tp+ep"), (4, "tp+ep")])
def test_counted_traffic_of_a_decode_step_equals_the_model_collectives(tp, layout):
    batch = 3
    ep = tp if layout == "tp+ep" else 1
    context = CountingContext(tp_size=tp, ep_size=ep)
    model = GptOss(CONFIG, context, experts_format="dense", dtype=torch.bfloat16)
    init_random_weights(model, seed=0)
    meta = AttentionMetadata.for_full_sequences([1] * batch)
    with torch.no_grad():
        hidden = model(torch.arange(batch), torch.zeros(batch, dtype=torch.long), meta)
        model.compute_logits(hidden)
    traffic = step_traffic(CONFIG, "tiny", tp, layout, batch)
    assert len(context.all_reduce_bytes) == traffic.all_reduces_per_step
    assert sum(context.all_reduce_bytes) == traffic.all_reduce_bytes_per_step
    assert sum(context.gathered_bytes) == traffic.logits_gather_bytes


def test_20b_tp2_bytes_per_layer_and_costlier_pcie():
    (row,) = [
        r for r in rows([1]) if (r["model"], r["tp"], r["layout"]) == ("gpt-oss-20b", 2, "tp+ep")
    ]
    assert row["bytes_per_layer"] == 2 * 2880 * 2  # attention + MoE all-reduce of [1, 2880] bf16
    assert row["all_reduces_per_step"] == 24 * 2 + 1
    assert row["pcie4_us"] > 2 * row["nvlink4_us"] > 0
    assert "| gpt-oss-120b | 1 | 8 | tp+ep | 2 |" in markdown(rows([1]))
