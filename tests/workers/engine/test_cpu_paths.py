"""The engine's CPU shortcuts change nothing: logits written into a reused buffer, and an
MXFP4 checkpoint decoded to dense experts once at load give the very same numbers."""

from __future__ import annotations

import pytest
import torch

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.model.attention_metadata import AttentionMetadata
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights
from oss_serve.workers.runner.executor import LocalExecutor

pytestmark = pytest.mark.unit
SMALL = PRESETS["gpt-oss-tiny"].with_(
    vocab_size=1000, num_hidden_layers=2, pad_token_id=0, eos_token_id=1, bos_token_id=2
)


@torch.inference_mode()
def test_logits_into_a_reused_buffer_equal_fresh_ones():
    model = init_random_weights(GptOss(SMALL, dtype=torch.float32), seed=3, std=0.2).eval()
    buffer = torch.full((70, SMALL.vocab_size), float("nan"))
    for rows in (1, 16, 64, 3):
        hidden = torch.randn(rows, SMALL.hidden_size)
        fresh = model.compute_logits(hidden)
        written = model.compute_logits(hidden, out=buffer[:rows])
        assert written.data_ptr() == buffer.data_ptr()
        assert torch.equal(written, fresh)


@torch.inference_mode()
def test_an_mxfp4_checkpoint_runs_with_dense_experts_on_cpu_and_the_same_logits(tmp_path):
    packed = init_random_weights(GptOss(SMALL, experts_format="mxfp4", dtype=torch.float32), 5)
    save_checkpoint(packed, SMALL, tmp_path, "hf-mxfp4")
    ids = torch.randint(0, SMALL.vocab_size, (1, 30))
    logits = {}
    for experts_format in ("auto", "mxfp4"):
        config = EngineConfig(
            model=str(tmp_path), dtype="float32", device="cpu", experts_format=experts_format
        )
        model = LocalExecutor(config).model
        logits[experts_format] = model.compute_logits(
            model(ids[0], torch.arange(30), AttentionMetadata.for_full_sequences([30]))
        )
        assert model.experts_format == ("dense" if experts_format == "auto" else "mxfp4")
    # dense experts take the C kernel, MXFP4 ones the grouped GEMMs: fp32, another sum order
    torch.testing.assert_close(logits["auto"], logits["mxfp4"], atol=1e-5, rtol=1e-5)


def test_greedy_rows_take_the_chunked_argmax_and_get_the_samplers_tokens(tmp_path):
    """Rows that want only their token skip the full logits; with logprobs asked for, the
    same requests go through the sampler: the tokens must be the same, batch mates mixed."""
    from oss_serve.workers.engine.llm import LLM
    from oss_serve.workers.engine.sampling_params import SamplingParams

    model = init_random_weights(GptOss(SMALL, dtype=torch.float32), seed=7, std=0.2)
    save_checkpoint(model, SMALL, tmp_path, "hf")
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in (5, 17, 40, 9)]
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, detokenize=False)
    with LLM(str(tmp_path), dtype="float32", device="cpu", skip_tokenizer_init=True) as llm:
        runner = llm.llm_engine.executor.runner  # type: ignore[attr-defined]
        argmax_only = [o.outputs[0].token_ids for o in llm.generate(prompts, plain)]
        assert runner._projection is not None  # the chunked path ran
        mixed = [plain.clone(logprobs=1) if i % 2 else plain for i in range(len(prompts))]
        outputs = llm.generate(prompts, mixed)
    assert [o.outputs[0].token_ids for o in outputs] == argmax_only
    assert outputs[1].outputs[0].logprobs and not outputs[0].outputs[0].logprobs
