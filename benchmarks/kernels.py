"""Kernel micro-benchmarks: what each Triton kernel must move and compute at gpt-oss shapes,
its roofline time on A100 / H100 / H200 / RTX 4090, and (with CUDA) how close it gets.

    python -m oss_serve.benchmarks.kernels              # roofline table (+ CUDA timings)
    python -m oss_serve.benchmarks.kernels --check      # + interpreter checks on CPU
    python -m oss_serve.benchmarks.kernels --compile    # + sm_80/89/90 compile check

Bytes are the minimum one call must read and write in HBM (weights of the experts the
batch routes to, with uniform routing; the KV a query sees; activations once), FLOPs the
multiply-adds x 2 of its matmuls. Roofline time = max(bytes / bandwidth, FLOPs / dense
bf16 tensor-core peak) from the data sheets in benchmarks.gpu_catalog. All numbers are
per layer on one GPU (tensor parallel 1); the MoE rows differ between the models, the
attention, norm, RoPE and KV rows are the same for both (64 q heads, 8 KV heads, d 64,
hidden 2880). With CUDA, each row also runs the Triton kernel (bf16) and the torch
reference on the same GPU: measured time, % of the roofline, and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from oss_serve.benchmarks.gpu_catalog import CATALOG, GPUSpec
from oss_serve.workers.model.config import PRESETS, ModelConfig

GPUS = ("a100-80gb", "h100", "h200", "rtx4090")
BF16 = 2  # bytes
MXFP4_BYTES_PER_WEIGHT = 0.5 + 1 / 32  # packed nibble + one E8M0 scale per 32
Runner = Callable[[torch.device], Callable[[], object]]


@dataclass(frozen=True)
class KernelCase:
    """One kernel call at one shape: its HBM traffic, its FLOPs, how to run it."""

    kernel: str
    model: str
    shape: str
    bytes_moved: float
    flops: float
    build: Runner | None = None  # device -> a no-argument call of the dispatcher

    def roofline_s(self, gpu: GPUSpec) -> float:
        return max(self.bytes_moved / gpu.bandwidth_bytes_per_s, self.flops / gpu.bf16_flops)

    def bound(self, gpu: GPUSpec) -> str:
        memory_s = self.bytes_moved / gpu.bandwidth_bytes_per_s
        return "memory" if memory_s >= self.flops / gpu.bf16_flops else "compute"


# --- bytes and FLOPs ------------------------------------------------------------------------
def experts_touched(config: ModelConfig, tokens: int) -> float:
    """Expected distinct experts `tokens` tokens route to (uniform routing, top-k distinct)."""
    experts, top_k = config.num_local_experts, config.num_experts_per_tok
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def moe_case(config: ModelConfig, model: str, tokens: int, weights: str) -> KernelCase:
    hidden, inter, top_k = config.hidden_size, config.intermediate_size, config.num_experts_per_tok
    weight_count = 3 * hidden * inter  # gate_up (2I x H) + down (H x I)
    per_weight = MXFP4_BYTES_PER_WEIGHT if weights == "mxfp4" else BF16
    expert_bytes = weight_count * per_weight + (2 * inter + hidden) * BF16  # + biases
    pairs = tokens * top_k
    activations = BF16 * (2 * tokens * hidden + 2 * pairs * inter + 2 * pairs * hidden)
    return KernelCase(
        f"moe_experts ({weights})",
        model,
        _tokens(tokens),
        experts_touched(config, tokens) * expert_bytes + activations,
        2 * pairs * weight_count,
        partial(_moe_runner, config, tokens, weights),
    )


def decode_attention_case(
    config: ModelConfig, batch: int, context: int, window: bool
) -> KernelCase:
    keys = min(context, config.sliding_window) if window else context
    kv_heads, q_heads, head_dim = (
        config.num_key_value_heads,
        config.num_attention_heads,
        config.head_dim,
    )
    kv_bytes = batch * keys * kv_heads * head_dim * 2 * BF16
    layer = "sliding" if window else "full"
    return KernelCase(
        f"paged_attention decode ({layer})",
        "both",
        f"{batch} x {context} context",
        kv_bytes + 2 * batch * q_heads * head_dim * BF16,
        4 * batch * keys * q_heads * head_dim,
        partial(_attention_runner, config, [1] * batch, [context] * batch, window),
    )


def prefill_attention_case(config: ModelConfig, tokens: int, window: bool) -> KernelCase:
    seen = sum(min(i + 1, config.sliding_window) if window else i + 1 for i in range(tokens))
    q_heads, kv_heads, head_dim = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    layer = "sliding" if window else "full"
    return KernelCase(
        f"paged_attention prefill ({layer})",
        "both",
        _tokens(tokens),
        tokens * (2 * q_heads + 2 * kv_heads) * head_dim * BF16,
        4 * seen * q_heads * head_dim,
        partial(_attention_runner, config, [tokens], [tokens], window),
    )


def _tokens(count: int) -> str:
    return f"{count} token" + ("s" if count != 1 else "")


def small_cases(config: ModelConfig, shapes: Shapes) -> list[KernelCase]:
    hidden, head_dim, vocab = config.hidden_size, config.head_dim, config.vocab_size
    heads = config.num_attention_heads + config.num_key_value_heads
    kv_row = config.num_key_value_heads * head_dim
    n = shapes.prefill_tokens
    cases = [
        KernelCase(
            "add_rms_norm",
            "both",
            _tokens(tokens),
            4 * tokens * hidden * BF16,
            4 * tokens * hidden,
            partial(_norm_runner, config, tokens),
        )
        for tokens in shapes.norm_tokens
    ]
    cases += [
        KernelCase(
            "rope_qk_",
            "both",
            _tokens(n),
            2 * n * heads * head_dim * BF16 + n * head_dim * 4,
            3 * n * heads * head_dim,
            partial(_rope_runner, config, n),
        ),
        KernelCase(
            "store_kv",
            "both",
            _tokens(n),
            2 * 2 * n * kv_row * BF16,
            0,
            partial(_store_kv_runner, config, n),
        ),
    ]
    cases += [
        KernelCase(
            "top_k_top_p",
            "both",
            f"{rows} x {vocab}",
            2 * rows * vocab * 4,
            0,
            partial(_sampling_runner, vocab, rows),
        )
        for rows in shapes.sampling_rows
    ]
    weights = config.num_local_experts * 2 * config.intermediate_size * hidden
    cases.append(
        KernelCase(
            "dequantize_mxfp4 (gate_up)",
            shapes.model_label(config),
            "1 layer, all experts",
            weights * (MXFP4_BYTES_PER_WEIGHT + BF16),
            0,
            partial(_dequantize_runner, config),
        )
    )
    return cases


@dataclass(frozen=True)
class Shapes:
    """The batch shapes of the table (gpt-oss serving); tests pass tiny ones."""

    models: tuple[str, ...] = ("gpt-oss-20b", "gpt-oss-120b")
    decode_tokens: tuple[int, ...] = (1, 32, 256)
    prefill_tokens: int = 4096
    dense_tokens: tuple[int, ...] = (1, 256)
    decode_attention: tuple[tuple[int, int], ...] = ((1, 4096), (64, 4096), (1, 131072))
    sliding_decode: tuple[int, int] = (64, 4096)
    norm_tokens: tuple[int, ...] = (256, 4096)
    sampling_rows: tuple[int, ...] = (1, 256)
    configs: dict[str, ModelConfig] = field(default_factory=dict)  # name -> config overrides

    def config(self, model: str) -> ModelConfig:
        return self.configs.get(model) or PRESETS[model]

    def model_label(self, config: ModelConfig) -> str:
        for model in self.models:
            if self.config(model) is config:
                return model.removeprefix("gpt-oss-")
        return "?"


def all_cases(shapes: Shapes | None = None) -> list[KernelCase]:
    shapes = shapes or Shapes()
    cases: list[KernelCase] = []
    for model in shapes.models:
        config, label = shapes.config(model), model.removeprefix("gpt-oss-")
        tokens = (*shapes.decode_tokens, shapes.prefill_tokens)
        cases += [moe_case(config, label, n, "mxfp4") for n in tokens]
    config = shapes.config(shapes.models[0])
    label = shapes.models[0].removeprefix("gpt-oss-")
    cases += [moe_case(config, label, n, "bf16") for n in shapes.dense_tokens]
    cases += [decode_attention_case(config, b, ctx, False) for b, ctx in shapes.decode_attention]
    cases.append(decode_attention_case(config, *shapes.sliding_decode, window=True))
    cases += [prefill_attention_case(config, shapes.prefill_tokens, w) for w in (False, True)]
    return cases + small_cases(config, shapes)


# --- runners: real tensors for one case (used with CUDA) -----------------------------------
def _random_bytes(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, device=device)


def _moe_runner(
    config: ModelConfig, tokens: int, weights: str, device: torch.device
) -> Callable[[], object]:
    from oss_serve.kernels.moe import moe_experts, route

    hidden, inter, experts = config.hidden_size, config.intermediate_size, config.num_local_experts
    x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    topk_weights, topk_ids = route(
        torch.randn(tokens, experts, device=device, dtype=torch.bfloat16),
        config.num_experts_per_tok,
    )
    b1 = torch.zeros(experts, 2 * inter, device=device, dtype=torch.bfloat16)
    b2 = torch.zeros(experts, hidden, device=device, dtype=torch.bfloat16)
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    if weights == "mxfp4":  # random codes, scale 2^-7
        w1 = _random_bytes((experts, 2 * inter, hidden // 32, 16), device)
        w2 = _random_bytes((experts, hidden, inter // 32, 16), device)
        s1 = torch.full((experts, 2 * inter, hidden // 32), 120, dtype=torch.uint8, device=device)
        s2 = torch.full((experts, hidden, inter // 32), 120, dtype=torch.uint8, device=device)
    else:
        w1 = torch.randn(experts, 2 * inter, hidden, device=device, dtype=torch.bfloat16) * 0.02
        w2 = torch.randn(experts, hidden, inter, device=device, dtype=torch.bfloat16) * 0.02
    return lambda: moe_experts(
        x, topk_weights, topk_ids, w1, s1, b1, w2, s2, b2,
        swiglu_alpha=config.swiglu_alpha, swiglu_limit=config.swiglu_limit,
    )  # fmt: skip


def _attention_runner(
    config: ModelConfig, q_lens: list[int], seq_lens: list[int], window: bool, device: torch.device
) -> Callable[[], object]:
    from oss_serve.kernels.attention import paged_attention

    block_size, kv_heads, head_dim = 16, config.num_key_value_heads, config.head_dim
    blocks_per_seq = -(-max(seq_lens) // block_size)
    num_blocks = blocks_per_seq * len(seq_lens)
    cache = torch.randn(
        2, num_blocks, block_size, kv_heads, head_dim, device=device, dtype=torch.bfloat16
    )
    table = torch.randperm(num_blocks, device=device, dtype=torch.int32).view(len(seq_lens), -1)
    starts = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    starts[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    query = torch.randn(
        sum(q_lens), config.num_attention_heads, head_dim, device=device, dtype=torch.bfloat16
    )
    sinks = torch.randn(config.num_attention_heads, device=device, dtype=torch.bfloat16)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return lambda: paged_attention(
        query, cache, table, lens, starts.to(device), sinks,
        sm_scale=head_dim**-0.5, sliding_window=config.sliding_window if window else None,
        max_query_len=max(q_lens),
    )  # fmt: skip


def _norm_runner(config: ModelConfig, tokens: int, device: torch.device) -> Callable[[], object]:
    from oss_serve.kernels.fused import add_rms_norm

    x, residual = torch.randn(2, tokens, config.hidden_size, device=device, dtype=torch.bfloat16)
    weight = torch.ones(config.hidden_size, device=device)
    return lambda: add_rms_norm(x, residual, weight, config.rms_norm_eps)


def _rope_runner(config: ModelConfig, tokens: int, device: torch.device) -> Callable[[], object]:
    from oss_serve.kernels.fused import rope_qk_

    q = torch.randn(
        tokens, config.num_attention_heads, config.head_dim, device=device, dtype=torch.bfloat16
    )
    k = torch.randn(
        tokens, config.num_key_value_heads, config.head_dim, device=device, dtype=torch.bfloat16
    )
    angles = torch.rand(tokens, config.head_dim // 2, device=device)
    return lambda: rope_qk_(q, k, angles.cos(), angles.sin())


def _store_kv_runner(
    config: ModelConfig, tokens: int, device: torch.device
) -> Callable[[], object]:
    from oss_serve.kernels.attention import store_kv

    shape = (tokens, config.num_key_value_heads, config.head_dim)
    key, value = (torch.randn(*shape, device=device, dtype=torch.bfloat16) for _ in range(2))
    cache = torch.empty(2, tokens // 16, 16, *shape[1:], device=device, dtype=torch.bfloat16)
    slots = torch.randperm(tokens, device=device)
    return lambda: store_kv(cache, key, value, slots)


def _sampling_runner(vocab: int, rows: int, device: torch.device) -> Callable[[], object]:
    from oss_serve.kernels.sampling import top_k_top_p

    probs = torch.softmax(torch.randn(rows, vocab, device=device) * 3, dim=-1)
    top_k = torch.full((rows,), 50, device=device)
    top_p = torch.full((rows,), 0.9, device=device)
    return lambda: top_k_top_p(probs, top_k, top_p)


def _dequantize_runner(config: ModelConfig, device: torch.device) -> Callable[[], object]:
    from oss_serve.kernels.mxfp4 import dequantize_mxfp4

    shape = (config.num_local_experts, 2 * config.intermediate_size, config.hidden_size // 32)
    blocks = _random_bytes((*shape, 16), device)
    scales = torch.full(shape, 120, dtype=torch.uint8, device=device)
    return lambda: dequantize_mxfp4(blocks, scales, torch.bfloat16)


# --- measuring ---------------------------------------------------------------------------------
def measure_s(
    call: Callable[[], object], device: torch.device, repeats: int = 20, warmup: int = 3
) -> float:
    """Median seconds per call after warm-up (CUDA events on a GPU, wall clock elsewhere)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


@dataclass(frozen=True)
class Measured:
    triton_s: float
    torch_s: float


def measure_case(
    case: KernelCase, device: torch.device, repeats: int = 20, warmup: int = 3
) -> Measured | None:
    """Both paths of one case on `device` (the torch reference gets a quarter of the
    repeats: it is the slow baseline), or None when the case has no runner."""
    from oss_serve.kernels.backend import force_backend

    if case.build is None:
        return None
    call = case.build(device)
    with force_backend("triton"):
        triton_s = measure_s(call, device, repeats, warmup)
    with force_backend("torch"):
        torch_s = measure_s(call, device, max(1, repeats // 4), min(warmup, 1))
    return Measured(triton_s, torch_s)


# --- the table ----------------------------------------------------------------------------------
def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def roofline_table(cases: list[KernelCase], measured: dict[int, Measured] | None = None) -> str:
    """A Markdown table: one row per case, roofline microseconds per GPU (+ measurements)."""
    gpus = [CATALOG[name] for name in GPUS]
    header = ["kernel", "model", "shape", "MB", "GFLOP"]
    header += [f"{gpu.name} µs" for gpu in gpus] + ["bound (H100)"]
    if measured is not None:
        header += ["Triton µs", "% of roofline", "torch µs", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    local = _local_gpu() if measured is not None else None
    for index, case in enumerate(cases):
        row = [case.kernel, case.model, case.shape]
        row += [f"{case.bytes_moved / 1e6:,.2f}", f"{case.flops / 1e9:,.2f}"]
        row += [_us(case.roofline_s(gpu)) for gpu in gpus] + [case.bound(CATALOG["h100"])]
        if measured is not None and local is not None:
            result = measured.get(index)
            if result is None:
                row += ["-"] * 4
            else:
                percent = 100 * case.roofline_s(local) / result.triton_s
                row += [_us(result.triton_s), f"{percent:.0f}%", _us(result.torch_s)]
                row.append(f"{result.torch_s / result.triton_s:.1f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _local_gpu() -> GPUSpec:
    """The catalog entry closest to the local CUDA device (by name), H100 if unknown."""
    name = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else ""
    for key, needle in (("h200", "h200"), ("h100", "h100"), ("rtx4090", "4090")):
        if needle in name:
            return CATALOG[key]
    if "a100" in name:
        return CATALOG["a100-80gb" if "80" in name else "a100-40gb"]
    return CATALOG["h100"]


def compile_check() -> str:
    """Output of the sm_80/89/90 compile check, run in a process without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run(
        [sys.executable, "-P", "-m", "oss_serve.kernels.compile_check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return (result.stdout or result.stderr).strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="interpreter checks (CPU)")
    parser.add_argument("--compile", action="store_true", help="sm_80/89/90 compile check")
    args = parser.parse_args(argv)
    cases = all_cases()
    measured = None
    if torch.cuda.is_available():
        device = torch.device("cuda")
        measured = {i: m for i, c in enumerate(cases) if (m := measure_case(c, device))}
        print(f"measured on {torch.cuda.get_device_name()} (bf16, Triton vs torch reference)")
    print(roofline_table(cases, measured))
    if args.check or not torch.cuda.is_available():
        from oss_serve.benchmarks.kernel_checks import interpreter_checks

        print("\nTriton interpreter vs torch reference (CPU, small shapes):")
        started = time.perf_counter()
        for name, error, tolerance in interpreter_checks():
            verdict = "ok" if error <= tolerance else "FAILED"
            print(f"  {name:<48} max |diff| {error:.2e}  (tolerance {tolerance:.0e})  {verdict}")
        print(f"  ({time.perf_counter() - started:.1f}s)")
    if args.compile:
        print(f"\ncompile check: {compile_check()}")
    return 0


if __name__ == "__main__":
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    sys.exit(main())
