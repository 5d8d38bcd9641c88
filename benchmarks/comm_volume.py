"""Bytes a TP/EP replica's collectives move per decode step, and their cost over NVLink vs PCIe.

What the model code does (workers/model/model.py, activations replicated on every rank), per
decode step of B tokens, hidden size H, bf16 activations:

- each layer: one all-reduce of the attention output [B, H] over the TP group (o_proj is
  row-parallel), and one all-reduce of the MoE partial sums [B, H] over the EP group
  when the experts are split;
- once per step: one all-reduce of the vocab-parallel embedding [B, H], and one
  all-gather of the fp32 logits [rows, V / TP] of the B sampled rows.

Layouts: "tp" splits heads only (experts replicated: 60 GiB of 120b experts on every GPU);
"tp+ep" also splits the experts over the same ranks (`experts_across_all_ranks`, what a
120b replica on 4-8 GPUs uses). A ring all-reduce of S bytes over n GPUs sends
2(n-1)/n x S bytes per GPU; time = link latency x log2(n) + wire bytes / link bandwidth,
with the link figures of benchmarks/gpu_catalog.py (the planner's roofline uses the same).
The context column is the planner's roofline memory time of that decode step on H100s.

    python -m oss_serve.benchmarks.comm_volume [--batch 1 64 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from oss_serve.benchmarks.gpu_catalog import LINKS

MODELS = ("gpt-oss-20b", "gpt-oss-120b")
TP_SIZES = (1, 2, 4, 8)
LAYOUTS = ("tp", "tp+ep")
ACTIVATION_BYTES = 2  # bf16
LOGIT_BYTES = 4  # fp32
LINK_COLUMNS = ("nvlink4", "pcie4")
CONTEXT_TOKENS = 2048


@dataclass(frozen=True)
class StepTraffic:
    model: str
    tp: int
    layout: str
    batch: int
    all_reduces_per_layer: int
    all_reduces_per_step: int  # every layer's + the embedding's
    all_reduce_bytes: int  # one all-reduce's tensor: B x H x 2
    bytes_per_layer: int  # tensor bytes all-reduced per layer
    all_reduce_bytes_per_step: int
    logits_gather_bytes: int  # what each rank receives of the gathered logits
    wire_bytes_per_gpu: float  # sent by each GPU per step (ring all-reduces + the gather)

    def comm_s(self, link: str) -> float:
        """Seconds of collectives per decode step over `link` (a gpu_catalog LINKS key)."""
        if self.tp == 1:
            return 0.0
        bandwidth, pair_latency_s = LINKS[link]
        latency_s = pair_latency_s * math.log2(self.tp)
        return (self.all_reduces_per_step + 1) * latency_s + self.wire_bytes_per_gpu / bandwidth


def step_traffic(config: Any, model: str, tp: int, layout: str, batch: int) -> StepTraffic:
    """Traffic of one decode step of `batch` tokens on a TP group of `tp` GPUs."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    message = batch * config.hidden_size * ACTIVATION_BYTES
    per_layer = 0 if tp == 1 else (2 if layout == "tp+ep" else 1)
    per_step = config.num_hidden_layers * per_layer + (1 if tp > 1 else 0)
    logits_shard = batch * -(-config.vocab_size // tp) * LOGIT_BYTES
    return StepTraffic(
        model=model,
        tp=tp,
        layout=layout,
        batch=batch,
        all_reduces_per_layer=per_layer,
        all_reduces_per_step=per_step,
        all_reduce_bytes=message,
        bytes_per_layer=per_layer * message,
        all_reduce_bytes_per_step=per_step * message,
        logits_gather_bytes=(tp - 1) * logits_shard,
        wire_bytes_per_gpu=2 * (tp - 1) / tp * per_step * message + (tp - 1) * logits_shard,
    )


def _memory_s(model: str, tp: int, batch: int) -> float:
    """The planner's roofline memory time of this decode step on `tp` H100s (for scale)."""
    from oss_serve.benchmarks.gpu_catalog import get_gpu, weights_path
    from oss_serve.benchmarks.planner import kv_layout, model_shape
    from oss_serve.benchmarks.roofline import Roofline

    shape = model_shape(model, "mxfp4")
    gpu = get_gpu("h100")
    kv = kv_layout(shape.config, tp, 16, ACTIVATION_BYTES)
    roofline = Roofline(shape, gpu, tp, weights_path(gpu, "mxfp4"), kv.bytes_per_token_per_layer)
    return roofline.decode_step(batch, CONTEXT_TOKENS).memory_s


def rows(batches: list[int]) -> list[dict[str, Any]]:
    from oss_serve.workers.model.config import PRESETS

    table = []
    for model in MODELS:
        config = PRESETS[model]
        for batch in batches:
            for tp in TP_SIZES:
                memory_s = _memory_s(model, tp, batch)
                for layout in LAYOUTS if tp > 1 else ("tp",):
                    traffic = step_traffic(config, model, tp, layout, batch)
                    row = asdict(traffic)
                    row.update({f"{link}_us": traffic.comm_s(link) * 1e6 for link in LINK_COLUMNS})
                    row["h100_memory_us"] = memory_s * 1e6
                    table.append(row)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    head = (
        "| model | batch | TP | layout | all-reduces/layer | bytes/layer | bytes/step "
        "(all-reduce + logits) | NVLink4 µs/step | PCIe4 µs/step | H100 weights+KV µs |\n"
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = [
        f"| {r['model']} | {r['batch']} | {r['tp']} | {r['layout']} | "
        f"{r['all_reduces_per_layer']} | {_size(r['bytes_per_layer'])} | "
        f"{_size(r['all_reduce_bytes_per_step'])} + {_size(r['logits_gather_bytes'])} | "
        f"{r['nvlink4_us']:.0f} | {r['pcie4_us']:.0f} | {r['h100_memory_us']:.0f} |"
        for r in table
    ]
    return head + "\n".join(lines) + "\n"


def _size(num_bytes: float) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} B"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    table = rows(args.batch)
    print(json.dumps(table, indent=2) if args.json else markdown(table), end="")


if __name__ == "__main__":
    main()
