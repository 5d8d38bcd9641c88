"""Checkpoints: written here and read by transformers, read here from every format, sharded
per rank, and refused with names when they do not fit."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from oss_serve.kernels.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.parallel import ParallelContext
from oss_serve.workers.model.weights import (
    CheckpointError,
    DictSource,
    RandomSource,
    find_checkpoint,
    init_random_weights,
    load_model,
    load_weights,
    local_shard,
)
from tests.workers.gpt_oss_helpers import full_sequence_logprobs, hf_logprobs

pytestmark = pytest.mark.unit
SMALL = PRESETS["gpt-oss-tiny"].with_(
    vocab_size=255, num_hidden_layers=2, pad_token_id=0, eos_token_id=1, bos_token_id=2
)


def random_model(config=SMALL, experts_format="mxfp4", seed=0, parallel=None) -> GptOss:
    model = GptOss(config, parallel, experts_format=experts_format, dtype=torch.float32)
    return init_random_weights(model, seed=seed, std=0.2).eval()


def _tokens(config, lengths=(40, 23), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, config.vocab_size, (n,), generator=g) for n in lengths]


def _same_state(a: GptOss, b: GptOss) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mxfp4_checkpoint_written_here_loads_in_transformers_bit_exact(tmp_path):
    """Full vocabulary (201088), several shards + index, transformers dequantizing on CPU."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    config = PRESETS["gpt-oss-tiny"].with_(num_hidden_layers=2)
    ours = random_model(config, "mxfp4", seed=3)
    save_checkpoint(ours, config, tmp_path, "hf-mxfp4", max_shard_bytes=30_000_000)
    assert find_checkpoint(tmp_path)[0] == "hf-mxfp4"
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    hf = GptOssForCausalLM.from_pretrained(
        tmp_path, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32
    ).eval()
    for layer, hf_layer in zip(ours.layers, hf.model.layers, strict=True):
        for proj in ("gate_up_proj", "down_proj"):
            blocks, scales = layer.mlp.experts.weights(proj)
            assert scales is not None
            dense = dequantize_mxfp4(blocks, scales, torch.float32)
            assert torch.equal(dense.transpose(1, 2), getattr(hf_layer.mlp.experts, proj))
    prompt = _tokens(config, (45,))[0]
    reloaded = load_model(tmp_path, dtype=torch.float32)
    assert _same_state(reloaded, ours)
    diff = (full_sequence_logprobs(reloaded, [prompt])[0] - hf_logprobs(hf, prompt)).abs().max()
    assert diff <= 1e-4


def test_dense_checkpoint_written_here_loads_in_transformers_with_same_logits(tmp_path):
    from transformers import GptOssForCausalLM

    ours = random_model(SMALL, "dense", seed=4)
    save_checkpoint(ours, SMALL, tmp_path, "hf-dense")
    hf = GptOssForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = _tokens(SMALL, (37,))[0]
    diff = (full_sequence_logprobs(ours, [prompt])[0] - hf_logprobs(hf, prompt)).abs().max()
    assert diff <= 1e-4
    assert _same_state(load_model(tmp_path, dtype=torch.float32), ours)


def test_original_format_round_trips_bit_exact_from_its_own_folder_or_a_repo(tmp_path):
    ours = random_model(SMALL, "mxfp4", seed=5)
    save_checkpoint(ours, SMALL, tmp_path / "repo" / "original", "original")
    written = load_file(tmp_path / "repo" / "original" / "model.safetensors")
    assert written["block.0.attn.qkv.weight"].shape == (SMALL.q_size + 2 * SMALL.kv_size, 64)
    dtypes = json.loads((tmp_path / "repo" / "original" / "dtypes.json").read_text())
    assert dtypes["block.0.mlp.mlp1_weight.blocks"] == "FP4"
    for folder in (tmp_path / "repo", tmp_path / "repo" / "original"):
        assert find_checkpoint(folder)[0] == "original"
        assert _same_state(load_model(folder, dtype=torch.float32), ours)


def test_experts_convert_between_mxfp4_and_dense_at_load(tmp_path):
    packed = random_model(SMALL, "mxfp4", seed=6)
    save_checkpoint(packed, SMALL, tmp_path / "mx", "hf-mxfp4")
    dense = load_model(tmp_path / "mx", dtype=torch.float32, experts_format="dense")
    blocks, scales = packed.layers[1].mlp.experts.weights("down_proj")
    assert scales is not None
    expected = dequantize_mxfp4(blocks, scales, torch.float32)
    assert torch.equal(dense.layers[1].mlp.experts.down_proj, expected)
    prompts = _tokens(SMALL)
    for a, b in zip(
        full_sequence_logprobs(packed, prompts), full_sequence_logprobs(dense, prompts), strict=True
    ):
        assert (a - b).abs().max() <= 1e-5
    save_checkpoint(dense, SMALL, tmp_path / "dense", "hf-dense")
    repacked = load_model(tmp_path / "dense", dtype=torch.float32, experts_format="mxfp4")
    # MXFP4 values re-encode exactly: the same logprobs as the packed original, and as the
    # dense model up to the sum order of the CPU's dense-experts kernel
    for a, b, tolerance in ((repacked, packed, 0.0), (repacked, dense, 1e-5)):
        prompts_a, prompts_b = (
            full_sequence_logprobs(a, prompts),
            full_sequence_logprobs(b, prompts),
        )
        assert all(
            (x - y).abs().max() <= tolerance for x, y in zip(prompts_a, prompts_b, strict=True)
        )
    blocks, scales = repacked.layers[1].mlp.experts.weights("down_proj")
    assert scales is not None
    assert torch.equal(dequantize_mxfp4(blocks, scales, torch.float32), expected)


def _drop_tensor(path, name):
    tensors = load_file(path)
    del tensors[name]
    save_file(tensors, path)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda d: _drop_tensor(d / "model.safetensors", "model.layers.1.self_attn.sinks"),
            "missing tensors: model.layers.1.self_attn.sinks",
        ),
        (
            lambda d: save_file(
                {**load_file(d / "model.safetensors"), "model.extra": torch.zeros(1)},
                d / "model.safetensors",
            ),
            "unexpected tensors: model.extra",
        ),
        (
            lambda d: (d / "config.json").write_text(
                (d / "config.json")
                .read_text()
                .replace('"intermediate_size": 64', '"intermediate_size": 96')
            ),
            r"mis-shaped tensors: model.layers.0.mlp.experts.down_proj_blocks \(8, 64, 2, 16\)",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
    ],
    ids=["missing", "unexpected", "mis-shaped", "no-weights"],
)
def test_bad_checkpoints_are_refused_naming_the_tensor(tmp_path, break_it, message):
    save_checkpoint(random_model(), SMALL, tmp_path, "hf-mxfp4")
    break_it(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path, dtype=torch.float32)


def test_an_index_naming_a_missing_shard_is_refused(tmp_path):
    save_checkpoint(random_model(), SMALL, tmp_path, "hf-mxfp4", max_shard_bytes=200_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(tmp_path)


def test_two_ranks_hold_disjoint_slices_that_rebuild_the_full_weights():
    full = random_model(SMALL, "mxfp4", seed=7).state_dict()
    ranks = [ParallelContext(tp_rank=r, tp_size=2, ep_rank=r, ep_size=2) for r in (0, 1)]
    shards = [random_model(SMALL, "mxfp4", seed=7, parallel=p).state_dict() for p in ranks]
    for name, tensor in full.items():
        dim, shard = local_shard(name, SMALL, ranks[0])
        if shard.stop < 0:  # replicated
            assert all(torch.equal(s[name], tensor) for s in shards), name
            continue
        rebuilt = torch.cat([s[name] for s in shards], dim=dim)
        if name in ("embed_tokens.weight", "lm_head.weight"):  # 255 rows -> 128 + 127 (+1 zero)
            assert rebuilt.shape[0] == 256 and not rebuilt[255].any()
            rebuilt = rebuilt[:255]
        assert torch.equal(rebuilt, tensor), name


class RecordingSource(DictSource):
    def __init__(self, tensors):
        super().__init__(tensors)
        self.reads: list[tuple[str, int, int, int]] = []

    def read(self, key, dim, start, stop):
        self.reads.append((key, dim, start, stop))
        return super().read(key, dim, start, stop)


def test_each_rank_reads_only_its_slice_and_progress_counts_to_the_total(tmp_path):
    save_checkpoint(random_model(), SMALL, tmp_path, "hf-mxfp4")
    source = RecordingSource(load_file(tmp_path / "model.safetensors"))
    model = GptOss(
        SMALL, ParallelContext(ep_rank=1, ep_size=2, tp_rank=1, tp_size=2), dtype=torch.float32
    )
    progress: list[tuple[int, int]] = []
    load_weights(
        model, source, "hf-mxfp4", progress=lambda done, total: progress.append((done, total))
    )
    reads = {key: (dim, start, stop) for key, dim, start, stop in source.reads}
    assert reads["model.layers.0.mlp.experts.gate_up_proj_blocks"] == (0, 4, 8)
    assert reads["model.layers.0.self_attn.k_proj.weight"] == (0, 16, 32)
    assert reads["model.layers.0.self_attn.o_proj.weight"] == (1, 32, 64)
    assert reads["lm_head.weight"] == (0, 128, 255)
    dones = [done for done, _ in progress]
    assert dones == sorted(dones) and dones[-1] == progress[-1][1]


@dataclass
class ThreadParallel(ParallelContext):
    """Two ranks as two threads in one process: collectives swap tensors through a barrier."""

    exchange: Any = None

    def _swap(self, rank: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        slots, barrier = self.exchange
        slots[rank] = tensor.clone()
        barrier.wait()
        pieces = list(slots)
        barrier.wait()
        return pieces

    def all_reduce(self, tensor):
        return tensor.copy_(sum(self._swap(self.tp_rank, tensor)))

    def expert_all_reduce(self, tensor):
        return tensor.copy_(sum(self._swap(self.ep_rank, tensor)))

    def all_gather(self, tensor, dim):
        return torch.cat(self._swap(self.tp_rank, tensor), dim=dim)


def test_two_parallel_ranks_compute_the_single_process_logits():
    prompts = _tokens(SMALL)
    expected = full_sequence_logprobs(random_model(SMALL, "mxfp4", seed=8), prompts)
    exchange = ([None, None], threading.Barrier(2, timeout=60))
    results: dict[int, Any] = {}

    def run(rank: int) -> None:
        parallel = ThreadParallel(rank, 2, rank, 2, exchange=exchange)
        try:
            results[rank] = full_sequence_logprobs(
                random_model(SMALL, "mxfp4", 8, parallel), prompts
            )
        except Exception as err:  # surfaced below
            results[rank] = err
            exchange[1].abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rank in (0, 1):
        assert not isinstance(results[rank], Exception), results[rank]
        for got, want in zip(results[rank], expected, strict=True):
            assert (got - want).abs().max() <= 1e-5


def test_a_preset_without_weights_gets_seeded_random_weights():
    a = load_model("gpt-oss-tiny", dtype=torch.float32, seed=1)
    assert _same_state(a, load_model("gpt-oss-tiny", dtype=torch.float32, seed=1))
    assert not _same_state(a, load_model("gpt-oss-tiny", dtype=torch.float32, seed=2))
    assert torch.equal(a.norm.weight, torch.ones(64))
    # the random source is just a checkpoint: the quantized experts are its dense ones, encoded
    dense = RandomSource(a.config, seed=1).read("model.layers.0.mlp.experts.down_proj", 0, 0, -1)
    blocks, _ = quantize_mxfp4(dense.transpose(1, 2))
    assert torch.equal(a.layers[0].mlp.experts.down_proj_blocks, blocks)
