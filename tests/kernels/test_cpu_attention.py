"""The C paged-attention kernel for the CPU against the torch reference, and its build."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from oss_serve.kernels import cpu_attention, native_build
from oss_serve.kernels.attention import paged_attention_ref, store_kv

pytestmark = pytest.mark.unit


def _batch(seq_lens, q_lens, q_heads, kv_heads, head_dim, block_size, seed):
    """A NaN-filled cache holding each sequence's keys in scattered blocks, and its queries."""
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks) + 3
    physical = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.zeros(len(seq_lens), max(blocks) + 2, dtype=torch.int32)
    cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), float("nan"))
    used = 0
    for seq, n in enumerate(seq_lens):
        table[seq, : blocks[seq]] = torch.tensor(physical[used : used + blocks[seq]])
        used += blocks[seq]
        pos = torch.arange(n)
        slots = table[seq, pos // block_size].long() * block_size + pos % block_size
        k, v = (torch.randn(n, kv_heads, head_dim, generator=g) for _ in range(2))
        store_kv(cache, k, v, slots)
    starts = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    starts[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    q = torch.randn(int(starts[-1]), q_heads, head_dim, generator=g)
    sinks = torch.randn(q_heads, generator=g) * 3
    return q, cache, table, torch.tensor(seq_lens, dtype=torch.int32), starts, sinks


CASES = [
    # seq_lens, q_lens, q_heads, kv_heads, head_dim, block_size
    ([37, 1, 16, 17, 300, 5], [1] * 6, 8, 2, 64, 16),  # decode, gpt-oss's head_dim
    ([37, 1, 16, 17, 90, 5], [1, 1, 5, 1, 90, 2], 8, 2, 64, 16),  # mixed prefill and decode
    ([40, 9], [40, 3], 64, 8, 64, 16),  # gpt-oss's 64 query heads over 8 KV heads
    ([70, 33], [1, 33], 4, 4, 128, 8),  # no GQA, head_dim 128
    ([25, 64], [2, 1], 6, 2, 24, 4),  # an odd head_dim (the generic loop), tiny blocks
    ([130], [1], 16, 1, 32, 128),  # MQA, one block longer than the kernel's run of keys
]


@pytest.mark.skipif(not native_build.native_kernels_enabled(), reason="native kernels off")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("window", [None, 1, 7, 128])
@torch.inference_mode()
def test_the_kernel_equals_the_reference(case, window):
    q, cache, table, lens, starts, sinks = _batch(*case, seed=len(case[0]))
    assert cpu_attention.supports(q, cache, sinks)
    out = cpu_attention.paged_attention(
        q, cache, table, lens, starts, sinks, sm_scale=0.125, sliding_window=window
    )
    expected = paged_attention_ref(
        q, cache, table, lens, starts, sinks, sm_scale=0.125, sliding_window=window,
        max_query_len=max(case[1]),
    )  # fmt: skip
    assert out is not None and out.isfinite().all()  # the NaN outside the keys is never read
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


@torch.inference_mode()
def test_it_declines_what_it_does_not_handle():
    q, cache, table, lens, starts, sinks = _batch([9], [1], 34, 2, 16, 4, seed=0)  # group 17
    out = cpu_attention.paged_attention(
        q, cache, table, lens, starts, sinks, sm_scale=0.125, sliding_window=None
    )
    assert out is None
    assert not cpu_attention.supports(q.half(), cache.half(), sinks)
    with torch.enable_grad():  # training keeps torch's autograd path
        assert not cpu_attention.supports(q, cache, sinks)


def test_the_library_is_built_once_and_reused(tmp_path):
    """A second process loads the cached library; switched off, nothing is built."""
    script = (
        "from oss_serve.kernels import native_build; "
        "lib = native_build.load('paged_attention'); print(lib._name if lib else None)"
    )
    env = {"OSS_SERVE_KERNEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    runs = [
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    paths = [run.stdout.strip() for run in runs]
    assert paths[0] == paths[1] and paths[0].startswith(str(tmp_path)), runs[0].stderr
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].rsplit("/", 1)[1]]
    off_env = {**env, "OSS_SERVE_KERNEL_CACHE": str(tmp_path / "off")}
    off = subprocess.run(
        [sys.executable, "-c", script],
        env={**off_env, "OSS_SERVE_NATIVE_KERNELS": "0"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert off.stdout.strip() == "None" and not (tmp_path / "off").exists()


def test_without_a_compiler_the_torch_path_is_kept(tmp_path):
    script = (
        "from oss_serve.kernels import native_build; print(native_build.load('paged_attention'))"
    )
    env = {"OSS_SERVE_KERNEL_CACHE": str(tmp_path), "PATH": str(tmp_path), "CC": ""}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "None" and "no C compiler" in run.stderr
