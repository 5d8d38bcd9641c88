"""Fine-tuning end to end: `oss-serve finetune` lowers held-out loss and writes a checkpoint
that transformers reads with the same logits; LoRA, gradient checkpointing, data handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from oss_serve.cli import app
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.weights import load_model
from oss_serve.workers.training import FinetuneConfig, finetune
from oss_serve.workers.training.demo_corpus import generate_corpus, write_jsonl
from oss_serve.workers.training.run import ADAPTER_DIR, RESULT_FILE
from tests.workers.gpt_oss_helpers import full_sequence_logprobs
from tests.workers.training.finetune_helpers import one_torch_thread  # noqa: F401 (autouse)

pytestmark = pytest.mark.unit


STEPS = 8


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """gpt-oss-tiny (the real vocabulary) with seeded random weights, as an HF dense folder."""
    folder = tmp_path_factory.mktemp("base")
    model = load_model("gpt-oss-tiny", dtype=torch.float32, experts_format="dense", seed=1)
    save_checkpoint(model, model.config, folder, format="hf-dense")
    return folder


@pytest.fixture(scope="module")
def conversations_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "conversations.jsonl"
    write_jsonl(generate_corpus(48, seed=7), str(path))
    return path


def _quick_config(model, data: Path, out: Path, **overrides) -> FinetuneConfig:
    """A few small steps: enough to move the held-out loss, cheap on one CPU thread."""
    settings = {"epochs": 4, "max_steps": STEPS, "lr": 3e-3, "max_batch_tokens": 500}
    settings |= {"eval_fraction": 0.25, "threads": 1, "show_progress": False}
    return FinetuneConfig(model=model, data=data, out_dir=out, **{**settings, **overrides})


def _held_out_probe(conversations_file: Path) -> list[torch.Tensor]:
    """A few token sequences from the data, to compare logits on."""
    from oss_serve.workers.training.data import load_conversations, render_conversations

    rendered = render_conversations(load_conversations(conversations_file)[:3])
    return [torch.tensor(group[0].token_ids) for group in rendered]


def test_cli_finetune_lowers_held_out_loss_and_transformers_reads_the_same_logits(
    base_checkpoint, conversations_file, tmp_path
):
    from transformers import GptOssForCausalLM

    out = tmp_path / "tuned"
    args = ["finetune", "--model", str(base_checkpoint), "--data", str(conversations_file)]
    args += ["--out", str(out), "--epochs", "4", "--max-steps", str(STEPS), "--lr", "3e-3"]
    args += ["--max-batch-tokens", "500", "--eval-fraction", "0.25", "--threads", "1"]
    args += ["--gradient-checkpointing"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.output
    record = json.loads((out / RESULT_FILE).read_text())
    assert record["steps"] == STEPS
    assert record["final_eval_loss"] < record["initial_eval_loss"] - 0.5

    ours = load_model(out, dtype=torch.float32)
    base = load_model(base_checkpoint, dtype=torch.float32)
    assert not torch.equal(ours.lm_head.weight, base.lm_head.weight)  # it trained
    hf = GptOssForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    probes = _held_out_probe(conversations_file)
    for tokens, our_logprobs in zip(probes, full_sequence_logprobs(ours, probes), strict=True):
        with torch.no_grad():
            hf_logprobs = torch.log_softmax(hf(tokens[None]).logits[0].float(), dim=-1)
        assert (our_logprobs - hf_logprobs).abs().max().item() < 1e-4


def test_lora_trains_only_attention_and_experts_and_saves_merged_weights(
    base_checkpoint, conversations_file, tmp_path
):
    result = finetune(
        _quick_config(
            base_checkpoint, conversations_file, tmp_path / "lora", lr=1e-2, lora=True, lora_rank=4
        )
    )
    assert result.final_eval_loss < result.initial_eval_loss
    tuned = load_model(tmp_path / "lora", dtype=torch.float32).state_dict()
    base = load_model(base_checkpoint, dtype=torch.float32).state_dict()
    adapted = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
    adapted += ("experts.gate_up_proj", "experts.down_proj")
    for name, tensor in base.items():
        if name.endswith(adapted):
            assert not torch.equal(tensor, tuned[name]), name
        else:
            assert torch.equal(tensor, tuned[name]), name
    total = sum(t.numel() for t in base.values())
    assert 0 < result.trainable_params < total // 100
    _served_adapter_matches_merged(base_checkpoint, tmp_path / "lora", conversations_file)


def _served_adapter_matches_merged(base: Path, out: Path, conversations_file: Path) -> None:
    """The unmerged PEFT adapter (out/adapter) served on the base model gives the merged
    checkpoint's log-probabilities."""
    from oss_serve import LLM, LoRARequest, SamplingParams

    engine = {"dtype": "float32", "device": "cpu", "skip_tokenizer_init": True}
    engine |= {"max_model_len": 1024, "kv_cache_memory": 32_000_000}
    prompt = {"prompt_token_ids": _held_out_probe(conversations_file)[0][:200].tolist()}
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    lora = LoRARequest("tuned", 1, str(out / ADAPTER_DIR))
    served = LLM(str(base), enable_lora=True, max_lora_rank=4, **engine).generate(
        [prompt], params, lora_request=lora
    )[0]
    merged = LLM(str(out), **engine).generate([prompt], params)[0]
    pairs = zip(served.prompt_logprobs[1:], merged.prompt_logprobs[1:], strict=True)
    tokens = served.prompt_token_ids[1:]
    diff = max(abs(a[t].logprob - b[t].logprob) for (a, b), t in zip(pairs, tokens, strict=True))
    assert diff <= 1e-4


def test_training_from_a_preset_on_the_corpus_vocabulary_writes_a_full_vocabulary_model(
    conversations_file, tmp_path
):
    result = finetune(
        _quick_config(
            "gpt-oss-tiny",
            conversations_file,
            tmp_path / "scratch",
            corpus_vocab=True,
            unknown_token_rate=0.05,
            max_batch_tokens=2000,
        )
    )
    assert result.final_eval_loss < result.initial_eval_loss - 1.0
    model = load_model(tmp_path / "scratch", dtype=torch.float32)
    assert model.config.vocab_size == 201088
    rows = model.lm_head.weight
    assert torch.equal(rows[150000], rows[150001])  # tokens outside the corpus share one row


def test_corpus_vocab_refuses_a_pretrained_checkpoint(base_checkpoint, conversations_file):
    result = CliRunner().invoke(
        app,
        [
            *("finetune", "--model", str(base_checkpoint), "--data", str(conversations_file)),
            *("--out", "/tmp/unused-never-written", "--corpus-vocab"),
        ],
    )
    assert result.exit_code == 2
    assert "corpus_vocab trains from scratch only" in result.output


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "conversations.jsonl:2: not JSON"),
        ("[1, 2]", "conversations.jsonl:2: expected a JSON object"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "robot"}]}', "conversations.jsonl:2: messages[0].role"),
    ],
)
def test_bad_training_lines_are_refused_naming_the_line(tmp_path, line, message):
    good = json.dumps(generate_corpus(1)[0])
    data = tmp_path / "conversations.jsonl"
    data.write_text(f"{good}\n{line}\n")
    result = CliRunner().invoke(
        app, ["finetune", "--model", "gpt-oss-tiny", "--data", str(data), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "")
