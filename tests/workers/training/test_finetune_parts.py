"""The pieces of fine-tuning, each against an independent computation: corpus-vocabulary loss vs
the full model's log-softmax, LoRA merge vs the adapted forward, gradient checkpointing vs
plain backward, packed batches vs the sequences' own assistant tokens."""

from __future__ import annotations

import random

import pytest
import torch
from torch.nn import functional as F

from oss_serve.harmony.training import TrainingSequence
from oss_serve.workers.model.attention_metadata import AttentionMetadata
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights
from oss_serve.workers.training.corpus_vocab import CorpusVocab
from oss_serve.workers.training.data import make_batch, pack, render_conversations, split_held_out
from oss_serve.workers.training.demo_corpus import generate_corpus
from oss_serve.workers.training.lora import apply_lora, merge_lora
from oss_serve.workers.training.trainer import (
    OptimConfig,
    batch_loss_sum,
    gradient_checkpointing,
    lr_at,
)
from tests.workers.training.finetune_helpers import one_torch_thread  # noqa: F401 (autouse)

pytestmark = pytest.mark.unit


SMALL = PRESETS["gpt-oss-tiny"].with_(vocab_size=500, num_hidden_layers=2)


def _model(config=SMALL, seed: int = 0) -> GptOss:
    model = GptOss(config, experts_format="dense", dtype=torch.float32)
    return init_random_weights(model, seed=seed, std=0.2)


def _logits(model: GptOss, ids: torch.Tensor) -> torch.Tensor:
    meta = AttentionMetadata.for_full_sequences([len(ids)])
    return model.compute_logits(model(ids, torch.arange(len(ids)), meta))


def _random_sequence(rng: random.Random, vocab_size: int, length: int) -> TrainingSequence:
    prompt = rng.randint(2, length - 2)
    return TrainingSequence(
        tuple(rng.randrange(vocab_size) for _ in range(length)),
        (False,) * prompt + (True,) * (length - prompt),
    )


def test_corpus_vocab_loss_equals_the_expanded_full_models_log_softmax():
    corpus = CorpusVocab.from_token_ids(random.Random(0).sample(range(500), 40), 500)
    small = _model(corpus.small_config(SMALL))
    full = GptOss(SMALL, experts_format="dense", dtype=torch.float32)
    full.load_state_dict(corpus.expand_state(small.state_dict()))
    full_ids = torch.tensor([corpus.token_ids[i % 40] for i in range(0, 120, 7)] + [3, 4])
    small_ids = corpus.token_map()[full_ids]
    with torch.no_grad():
        small_logits, full_logits = _logits(small, small_ids), _logits(full, full_ids)
    in_corpus = torch.tensor(corpus.token_ids)
    torch.testing.assert_close(full_logits[:, in_corpus], small_logits[:, :-1])
    outside = torch.ones(500, dtype=torch.bool)
    outside[in_corpus] = False
    assert torch.equal(full_logits[:, outside], small_logits[:, -1:].expand(-1, int(outside.sum())))
    expected = torch.log_softmax(full_logits, dim=-1)[:, in_corpus]
    ours = torch.log_softmax(corpus.full_logits(small_logits), dim=-1)[:, :-1]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_unknown_token_augmentation_touches_only_prompt_text_tokens():
    corpus = CorpusVocab.from_token_ids(range(100, 300), 201088)
    rng = random.Random(0)
    sequence = TrainingSequence(
        tuple([200006, *range(100, 160), 200008, *range(160, 200)]),
        (False,) * 62 + (True,) * 40,
    )
    augmented = corpus.with_unknown_tokens(sequence, 0.5, rng)
    changed = [
        i
        for i, (a, b) in enumerate(zip(sequence.token_ids, augmented.token_ids, strict=True))
        if a != b
    ]
    assert 10 < len(changed) < 50
    assert all(0 < i < 61 for i in changed)  # neither specials nor targets
    unseen = corpus.token_map()[torch.tensor(augmented.token_ids[changed[0]])]
    assert int(unseen) == corpus.other_row


def test_lora_starts_at_the_base_model_and_merging_keeps_the_adapted_outputs():
    model = _model()
    ids = torch.randint(0, 500, (30,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = _logits(model, ids)
    params = apply_lora(model, rank=4, alpha=8.0)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, ids), base)
        for param in params:
            param.normal_(0, 0.3)
        adapted = _logits(model, ids)
    assert (adapted - base).abs().max() > 1e-2
    merge_lora(model)
    assert set(model.state_dict()) == set(_model().state_dict())
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, ids), adapted, rtol=0, atol=1e-5)


def test_lora_rejects_unknown_targets():
    with pytest.raises(ValueError, match="mlp"):
        apply_lora(_model(), rank=2, alpha=4.0, targets=("mlp",))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    rng = random.Random(2)
    batch = make_batch([_random_sequence(rng, 500, n) for n in (20, 33, 9)], None)
    results = []
    for enabled in (False, True):
        model = _model(seed=3)
        with gradient_checkpointing(model, enabled):
            loss = batch_loss_sum(model, batch, None)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-7)


def test_chunked_full_vocabulary_loss_equals_one_cross_entropy(monkeypatch):
    from oss_serve.workers.training import trainer

    model = _model()
    batch = make_batch([_random_sequence(random.Random(4), 500, 60)], None)
    whole = batch_loss_sum(model, batch, None)
    monkeypatch.setattr(trainer, "_LOGIT_ELEMENTS_PER_CHUNK", 500 * 7)  # 7 rows per chunk
    chunked = batch_loss_sum(model, batch, None)
    torch.testing.assert_close(chunked, whole)
    with torch.no_grad():
        hidden = model(batch.input_ids, batch.positions, batch.meta)
        logits = model.compute_logits(hidden[batch.loss_rows])
    torch.testing.assert_close(whole, F.cross_entropy(logits, batch.targets, reduction="sum"))


def test_a_packed_batch_targets_exactly_each_sequences_assistant_tokens():
    rng = random.Random(5)
    sequences = [_random_sequence(rng, 500, n) for n in (12, 7, 30)]
    batch = make_batch(sequences, None)
    expected = [
        t for s in sequences for t, m in zip(s.token_ids, s.assistant_mask, strict=True) if m
    ]
    assert batch.targets.tolist() == expected
    starts = batch.meta.query_start_loc.tolist()
    assert starts == [0, 12, 19, 49]
    assert batch.positions.tolist() == [*range(12), *range(7), *range(30)]
    # a row never predicts across a sequence boundary
    assert not set(batch.loss_rows.tolist()) & {s - 1 for s in starts[1:]}


def test_held_out_split_keeps_each_conversation_on_one_side():
    rendered = render_conversations(generate_corpus(40, seed=9))
    train, held = split_held_out(rendered, 0.25, seed=0)
    by_prompt = {
        seq.token_ids[: seq.prompt_len]: i for i, group in enumerate(rendered) for seq in group
    }
    held_ids = {by_prompt[s.token_ids[: s.prompt_len]] for s in held}
    train_ids = {by_prompt[s.token_ids[: s.prompt_len]] for s in train}
    assert len(held_ids) == round(len(rendered) * 0.25) and not held_ids & train_ids
    assert len(train) + len(held) == sum(len(g) for g in rendered)


def test_packing_respects_the_token_budget_and_keeps_every_sequence():
    rng = random.Random(6)
    sequences = [_random_sequence(rng, 500, rng.randint(5, 60)) for _ in range(50)]
    groups = pack(sequences, 100, random.Random(0))
    assert sorted(id(s) for g in groups for s in g) == sorted(id(s) for s in sequences)
    assert all(sum(len(s.token_ids) for s in g) <= 100 for g in groups)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    optim = OptimConfig(lr=1.0, weight_decay=0.0, warmup_steps=10, total_steps=110)
    assert lr_at(0, optim) == pytest.approx(0.1)
    assert lr_at(9, optim) == pytest.approx(1.0)
    assert lr_at(60, optim) == pytest.approx(0.55)
    assert lr_at(110, optim) == pytest.approx(0.1)
