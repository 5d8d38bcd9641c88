"""Compile every Triton kernel for real GPU targets on a machine without a GPU.

The kernels are proven against their torch references under the interpreter, which runs
any Python; this check proves the compiled path is real too: each public Triton launcher
runs with CPU stand-in tensors (bf16, gpt-oss's head and group sizes) while a
compile-only driver reports a CUDA target, and Triton's JIT cache hook compiles each
launch to PTX and a cubin for every requested architecture instead of launching it.

    python -m oss_serve.kernels.compile_check --arch 80 --arch 89 --arch 90

Must run in a process without TRITON_INTERPRET (the kernels must be JIT functions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

DEFAULT_ARCHS = (80, 89, 90)  # A100, RTX 4090 / L40S, H100 / H200


@dataclass
class CompiledKernel:
    name: str
    arch: int
    seconds: float
    error: str | None = None


class _CompileOnlyDriver:
    """Stands in for the CUDA driver: reports a target, owns no device, launches nothing."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextmanager
def _compile_instead_of_launch(
    archs: tuple[int, ...], results: list[CompiledKernel]
) -> Iterator[None]:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.driver import driver

    seen: set[tuple[str, str]] = set()

    def hook(*, key: Any, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        name = fn.name
        if (name, str(key)) in seen:
            return True
        seen.add((name, str(key)))
        for arch in archs:
            started = time.perf_counter()
            error = None
            try:
                source = ASTSource(
                    fn.jit_function,
                    compile["signature"],
                    compile["constants"],
                    compile["configs"][0],
                )
                options = {"num_warps": compile["num_warps"], "num_stages": compile["num_stages"]}
                binary = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
                if not binary.asm.get("cubin"):
                    error = "no cubin produced"
            except Exception as exc:  # report every kernel, not just the first failure
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            results.append(CompiledKernel(name, arch, time.perf_counter() - started, error))
        return True  # skip the launch

    previous_hook, previous_driver = knobs.runtime.jit_cache_hook, driver._active
    driver.set_active(_CompileOnlyDriver(archs[0]))
    knobs.runtime.jit_cache_hook = hook
    try:
        yield
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver._active = previous_driver  # reset_active() would look for a real GPU


def _launches() -> list[tuple[str, Callable[[], object]]]:
    """Every public Triton launcher once, with the dtypes and constexprs a GPU run uses."""
    from . import (
        triton_attention,
        triton_kv,
        triton_lora,
        triton_moe,
        triton_mxfp4,
        triton_norm,
        triton_rope,
        triton_sampling,
    )
    from .lora import LoRAWeights

    bf16 = torch.bfloat16
    tokens, q_heads, kv_heads, head_dim, hidden, experts = 8, 16, 2, 64, 128, 8
    q = torch.zeros(tokens, q_heads, head_dim, dtype=bf16)
    k = torch.zeros(tokens, kv_heads, head_dim, dtype=bf16)
    cache = torch.zeros(2, 4, 16, kv_heads, head_dim, dtype=bf16)
    table = torch.zeros(2, 4, dtype=torch.int32)
    seq_lens = torch.tensor([20, 30], dtype=torch.int32)
    decode_starts = torch.tensor([0, 1, 2], dtype=torch.int32)
    prefill_starts = torch.tensor([0, 3, 8], dtype=torch.int32)
    sinks = torch.zeros(q_heads, dtype=bf16)
    x = torch.zeros(tokens, hidden, dtype=bf16)
    logits = torch.zeros(tokens, experts, dtype=bf16)
    ids = torch.zeros(tokens, 4, dtype=torch.int64)
    weights = torch.zeros(tokens, 4, dtype=bf16)
    blocks = torch.zeros(experts, 2 * hidden, hidden // 32, 16, dtype=torch.uint8)
    scales = torch.zeros(experts, 2 * hidden, hidden // 32, dtype=torch.uint8)
    w2_blocks, w2_scales = blocks[:, :hidden], scales[:, :hidden]
    bias1 = torch.zeros(experts, 2 * hidden, dtype=bf16)
    bias2 = torch.zeros(experts, hidden, dtype=bf16)
    dense1 = torch.zeros(experts, 2 * hidden, hidden, dtype=bf16)
    dense2 = torch.zeros(experts, hidden, hidden, dtype=bf16)
    cos = torch.zeros(tokens, head_dim // 2)
    alpha, limit = 1.702, 7.0
    window = 128
    return [
        ("dequantize_mxfp4", partial(triton_mxfp4.dequantize_mxfp4, blocks, scales, bf16)),
        ("route", partial(triton_moe.route, logits, 4)),
        (
            "moe_experts mxfp4",
            partial(
                triton_moe.moe_experts,
                *(x, weights, ids, blocks, scales, bias1, w2_blocks, w2_scales, bias2),
                swiglu_alpha=alpha,
                swiglu_limit=limit,
            ),
        ),
        (
            "moe_experts dense",
            partial(
                triton_moe.moe_experts,
                *(x, weights, ids, dense1, None, bias1, dense2, None, bias2),
                swiglu_alpha=alpha,
                swiglu_limit=limit,
            ),
        ),
        (
            "paged decode split-K",
            partial(
                triton_attention.paged_attention,
                *(q[:2], cache, table, seq_lens, decode_starts, sinks),
                sm_scale=0.125,
                sliding_window=window,
                max_query_len=1,
                num_splits=4,
            ),
        ),
        (
            "paged decode, one sequence",  # ints equal to 1 may be specialised
            partial(
                triton_attention.paged_attention,
                *(q[:1], cache, table[:1], seq_lens[:1], decode_starts[:2], sinks),
                sm_scale=0.125,
                sliding_window=None,
                max_query_len=1,
            ),
        ),
        (
            "moe_experts mxfp4, one token",
            partial(
                triton_moe.moe_experts,
                *(x[:1], weights[:1], ids[:1], blocks, scales, bias1, w2_blocks, w2_scales, bias2),
                swiglu_alpha=alpha,
                swiglu_limit=limit,
            ),
        ),
        (
            "paged prefill",
            partial(
                triton_attention.paged_attention,
                *(q, cache, table, seq_lens, prefill_starts, sinks),
                sm_scale=0.125,
                sliding_window=window,
                max_query_len=5,
            ),
        ),
        (
            "varlen",
            partial(
                triton_attention.varlen_attention,
                *(q, k, k, prefill_starts, sinks),
                sm_scale=0.125,
                sliding_window=None,
            ),
        ),
        ("store_kv", partial(triton_kv.store_kv, cache, k, k, torch.arange(tokens))),
        ("rms_norm", partial(triton_norm.rms_norm, x, torch.ones(hidden), 1e-5)),
        ("add_rms_norm", partial(triton_norm.add_rms_norm, x, x, torch.ones(hidden), 1e-5)),
        ("rope_qk_", partial(triton_rope.rope_qk_, q, k, cos, cos)),
        (
            "add_lora",
            partial(
                triton_lora.add_lora,
                torch.zeros(tokens, hidden, dtype=bf16),
                x,
                LoRAWeights(
                    torch.zeros(2, 16, hidden, dtype=bf16),
                    torch.zeros(2, hidden, 16, dtype=bf16),
                    torch.zeros(2),
                ),
                torch.zeros(tokens, dtype=torch.int32),
            ),
        ),
        (
            "top_k_top_p",
            partial(
                triton_sampling.top_k_top_p,
                torch.zeros(2, 1000),
                torch.tensor([5, 0]),
                torch.tensor([0.9, 1.0]),
            ),
        ),
    ]


def compile_all(archs: tuple[int, ...] = DEFAULT_ARCHS) -> list[CompiledKernel]:
    """Compile every kernel launch for every arch; one result per (kernel variant, arch)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset (JIT, not interpreted)")
    results: list[CompiledKernel] = []
    with _compile_instead_of_launch(archs, results):
        for _, launch in _launches():
            launch()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", help="sm version, e.g. 90")
    args = parser.parse_args(argv)
    archs = tuple(args.arch or DEFAULT_ARCHS)
    results = compile_all(archs)
    for result in results:
        status = "ok" if result.error is None else f"FAILED {result.error}"
        print(f"sm_{result.arch}  {result.name:<28} {result.seconds:6.2f}s  {status}")
    failed = [r for r in results if r.error is not None]
    print(f"{len(results) - len(failed)}/{len(results)} kernel builds compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
