"""The training loop: loss on assistant tokens, AdamW, warmup + cosine, held-out evaluation.

The model is the serving model (workers.model.GptOss) run on packed flat batches without a KV
cache, on the torch reference kernels (the Triton ones have no backward).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from oss_serve.common.logging import get_logger
from oss_serve.kernels.backend import force_backend
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.training.corpus_vocab import CorpusVocab
from oss_serve.workers.training.data import Batch

log = get_logger(__name__)

# logits materialised at once in the loss: beyond this, chunks recomputed in backward
_LOGIT_ELEMENTS_PER_CHUNK = 1 << 24


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    weight_decay: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class TrainLog:
    """What happened: loss per logged step, held-out loss per evaluation, timings."""

    train_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_seen: int = 0
    train_seconds: float = 0.0


ProgressFn = Callable[[int, int, float], None]  # (step done, total steps, recent train loss)


def lr_at(step: int, optim: OptimConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, optim.total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params: Sequence[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases, norms, sinks)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def batch_loss_sum(model: GptOss, batch: Batch, vocab: CorpusVocab | None) -> torch.Tensor:
    """Sum of the cross-entropy over the batch's assistant tokens (full-vocabulary loss)."""
    hidden = model(batch.input_ids, batch.positions, batch.meta)
    rows = hidden[batch.loss_rows]
    vocab_rows = model.lm_head.weight.shape[0]
    chunk = max(1, _LOGIT_ELEMENTS_PER_CHUNK // vocab_rows)

    def chunk_loss(chunk_rows: torch.Tensor, chunk_targets: torch.Tensor) -> torch.Tensor:
        logits = model.compute_logits(chunk_rows)
        if vocab is not None:
            logits = vocab.full_logits(logits)
        return F.cross_entropy(logits, chunk_targets, reduction="sum")

    if rows.shape[0] <= chunk:
        return chunk_loss(rows, batch.targets)
    total = rows.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], chunk):
        piece = slice(start, start + chunk)
        loss = checkpoint(chunk_loss, rows[piece], batch.targets[piece], use_reentrant=False)
        total = total + loss
    return total


def evaluate(model: GptOss, batches: Sequence[Batch], vocab: CorpusVocab | None) -> float:
    """Mean cross-entropy per assistant token over `batches` (nan when there are none)."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad(), force_backend("torch"):
        for batch in batches:
            total += float(batch_loss_sum(model, batch, vocab))
            count += batch.num_targets
    model.train(was_training)
    return total / count if count else float("nan")


@contextlib.contextmanager
def gradient_checkpointing(model: GptOss, enabled: bool) -> Iterator[None]:
    """Recompute each decoder layer's activations in backward instead of keeping them."""
    if not enabled:
        yield
        return
    originals = []
    for layer in model.layers:
        forward = layer.forward
        originals.append((layer, forward))

        def checkpointed(*args: object, _forward: Callable[..., torch.Tensor] = forward) -> object:
            return checkpoint(_forward, *args, use_reentrant=False)

        layer.forward = checkpointed
    try:
        yield
    finally:
        for layer, forward in originals:
            layer.forward = forward


def train(
    model: GptOss,
    params: Sequence[torch.nn.Parameter],
    batches: Iterable[Batch],
    optim: OptimConfig,
    *,
    vocab: CorpusVocab | None,
    eval_batches: Sequence[Batch] = (),
    eval_every: int = 0,
    gradient_checkpointing_enabled: bool = False,
    progress: ProgressFn | None = None,
) -> TrainLog:
    """One optimizer step per batch (optim.total_steps of them); evaluate every `eval_every`."""
    record = TrainLog()
    optimizer = make_optimizer(params, optim)
    model.train()
    recent: list[float] = []
    started = time.perf_counter()
    with force_backend("torch"), gradient_checkpointing(model, gradient_checkpointing_enabled):
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, optim)
            loss = batch_loss_sum(model, batch, vocab) / max(1, batch.num_targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
            optimizer.step()
            record.tokens_seen += batch.num_tokens
            recent = [*recent[-19:], loss.item()]
            mean_recent = sum(recent) / len(recent)
            if step % 10 == 0 or step == optim.total_steps - 1:
                record.train_losses.append((step + 1, mean_recent))
            if eval_every and eval_batches and (step + 1) % eval_every == 0:
                record.eval_losses.append((step + 1, evaluate(model, eval_batches, vocab)))
            if progress is not None:
                progress(step + 1, optim.total_steps, mean_recent)
    record.train_seconds = time.perf_counter() - started
    model.eval()
    return record
