"""`finetune(config)`: conversations in, an HF checkpoint that every part of oss-serve loads out.

Full fine-tune or LoRA of a checkpoint (saved merged into the weights, as a PEFT adapter
folder to serve beside others on the base model, or both: `lora_save`), or training from scratch from a preset
or a ModelConfig (random init, optionally on the corpus's vocabulary: see corpus_vocab).
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from oss_serve.common.logging import get_logger
from oss_serve.harmony.training import TrainingSequence
from oss_serve.workers.lora.peft_format import write_adapter
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.config import PRESETS, ModelConfig
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights, load_model
from oss_serve.workers.runner.executor import resolve_device, resolve_dtype
from oss_serve.workers.training.corpus_vocab import CorpusVocab
from oss_serve.workers.training.data import (
    Batch,
    DataError,
    drop_long,
    make_batch,
    pack,
    read_jsonl,
    render_conversations,
    split_held_out,
)
from oss_serve.workers.training.lora import LORA_TARGETS, apply_lora, lora_adapter, merge_lora
from oss_serve.workers.training.progress import training_progress
from oss_serve.workers.training.trainer import OptimConfig, TrainLog, evaluate, train

log = get_logger(__name__)

RESULT_FILE = "finetune.json"
ADAPTER_DIR = "adapter"  # lora_save="both": the PEFT adapter beside the merged checkpoint
SaveFormat = Literal["hf-dense", "hf-mxfp4"]
LoRASave = Literal["merged", "adapter", "both"]


@dataclass(frozen=True)
class FinetuneConfig:
    """What to train and how. `model`: a checkpoint folder (fine-tune), or a preset name /
    ModelConfig (train from scratch, random init seeded by `seed`)."""

    model: str | Path | ModelConfig
    out_dir: Path
    data: Path | None = None  # JSONL; or pass conversations to finetune()
    epochs: int = 1
    max_steps: int | None = None  # stop earlier than `epochs`
    lr: float = 1e-4
    warmup_steps: int | None = None  # default: 5% of the steps
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_batch_tokens: int = 4096
    max_seq_len: int = 4096
    eval_fraction: float = 0.1
    evals: int = 1  # held-out evaluations during training (plus one before and one after)
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # merged: a full checkpoint in out_dir; adapter: only the PEFT adapter in out_dir;
    # both: the checkpoint in out_dir and the adapter in out_dir/adapter
    lora_save: LoRASave = "both"
    gradient_checkpointing: bool = False
    corpus_vocab: bool = False  # from scratch only: train on the corpus's tokens (exact loss)
    unknown_token_rate: float = 0.0  # corpus_vocab: share of prompt tokens shown as unseen ones
    init_std: float | None = None  # from scratch: weight std (default: config.initializer_range)
    seed: int = 0
    device: str = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    save_format: SaveFormat = "hf-dense"
    threads: int | None = None  # torch CPU threads while training (None: leave as is)
    show_progress: bool | None = None  # None: a bar on a terminal, log lines elsewhere


@dataclass
class FinetuneResult:
    """Where the checkpoint went and what training measured (also in out_dir/finetune.json)."""

    out_dir: Path
    steps: int
    train_sequences: int
    eval_sequences: int
    trainable_params: int
    initial_eval_loss: float
    final_eval_loss: float
    train_seconds: float
    total_seconds: float
    peak_rss_mib: float
    tokens_seen: int
    log: TrainLog = field(default_factory=TrainLog)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


def finetune(
    config: FinetuneConfig, conversations: Sequence[Mapping[str, Any]] | None = None
) -> FinetuneResult:
    """Train per `config` on `conversations` (or config.data) and save the checkpoint."""
    started = time.perf_counter()
    labels = None
    if conversations is None:
        if config.data is None:
            raise DataError("finetune needs conversations or a --data file")
        labels, conversations = zip(*read_jsonl(config.data), strict=True)
    rendered = render_conversations([dict(c) for c in conversations], labels)
    train_seqs, eval_seqs = split_held_out(rendered, config.eval_fraction, config.seed)
    train_seqs, dropped = drop_long(train_seqs, config.max_seq_len)
    eval_seqs, dropped_eval = drop_long(eval_seqs, config.max_seq_len)
    if dropped + dropped_eval:
        log.warning("sequences longer than max_seq_len skipped", count=dropped + dropped_eval)
    if not train_seqs:
        raise DataError(f"no training sequence fits max_seq_len={config.max_seq_len}")
    with _torch_threads(config.threads):
        torch.manual_seed(config.seed)
        device = resolve_device(config.device)
        vocab = _corpus_vocab(config, train_seqs + eval_seqs)
        model, full_config = _build_model(config, vocab, device)
        params = _trainable(model, config)
        token_map = vocab.token_map() if vocab is not None else None
        steps = _step_groups(train_seqs, config)
        optim = OptimConfig(
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps
            if config.warmup_steps is not None
            else max(1, len(steps) // 20),
            total_steps=len(steps),
            min_lr_ratio=config.min_lr_ratio,
        )
        eval_batches = [
            make_batch(group, token_map).to(device)
            for group in pack(eval_seqs, config.max_batch_tokens, None)
        ]
        initial_eval = evaluate(model, eval_batches, vocab)
        log.info("finetune starting", steps=len(steps), params=sum(p.numel() for p in params))
        with training_progress("finetune", config.show_progress) as progress:
            record = train(
                model,
                params,
                _batches(steps, token_map, device, _augment(vocab, config)),
                optim,
                vocab=vocab,
                eval_batches=eval_batches,
                eval_every=max(1, len(steps) // (config.evals + 1)) if config.evals else 0,
                gradient_checkpointing_enabled=config.gradient_checkpointing,
                progress=progress,
            )
        final_eval = evaluate(model, eval_batches, vocab)
        _save(model, full_config, vocab, config)
    result = FinetuneResult(
        out_dir=Path(config.out_dir),
        steps=len(steps),
        train_sequences=len(train_seqs),
        eval_sequences=len(eval_seqs),
        trainable_params=sum(p.numel() for p in params),
        initial_eval_loss=initial_eval,
        final_eval_loss=final_eval,
        train_seconds=record.train_seconds,
        total_seconds=time.perf_counter() - started,
        peak_rss_mib=peak_rss_mib(),
        tokens_seen=record.tokens_seen,
        log=record,
    )
    record_fields = {k: v for k, v in result.to_dict().items() if k != "out_dir"}
    (Path(config.out_dir) / RESULT_FILE).write_text(json.dumps(record_fields, indent=2))
    log.info("finetune done", eval_loss=round(final_eval, 4), seconds=round(result.total_seconds))
    return result


def _step_groups(
    train_seqs: list[TrainingSequence], config: FinetuneConfig
) -> list[list[TrainingSequence]]:
    """Every step's sequences: `epochs` shuffled passes, cut at max_steps."""
    if config.epochs < 1:
        raise DataError(f"epochs must be >= 1, got {config.epochs}")
    rng = random.Random(config.seed)
    groups: list[list[TrainingSequence]] = []
    for _ in range(config.epochs):
        groups += pack(train_seqs, config.max_batch_tokens, rng)
    return groups[: config.max_steps] if config.max_steps is not None else groups


def _batches(
    groups: list[list[TrainingSequence]],
    token_map: torch.Tensor | None,
    device: torch.device,
    augment: Callable[[TrainingSequence], TrainingSequence] | None,
) -> Iterator[Batch]:
    for group in groups:
        if augment is not None:
            group = [augment(seq) for seq in group]
        yield make_batch(group, token_map).to(device)


def _augment(
    vocab: CorpusVocab | None, config: FinetuneConfig
) -> Callable[[TrainingSequence], TrainingSequence] | None:
    if config.unknown_token_rate <= 0:
        return None
    if vocab is None:
        raise ValueError("unknown_token_rate needs corpus_vocab (it trains the shared row)")
    rng = random.Random(config.seed + 1)
    return lambda seq: vocab.with_unknown_tokens(seq, config.unknown_token_rate, rng)


def _from_scratch_config(model: str | Path | ModelConfig) -> ModelConfig | None:
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str) and model in PRESETS and not Path(model).exists():
        return PRESETS[model]
    return None


def _corpus_vocab(
    config: FinetuneConfig, sequences: Sequence[TrainingSequence]
) -> CorpusVocab | None:
    if not config.corpus_vocab:
        return None
    scratch = _from_scratch_config(config.model)
    if scratch is None:
        raise ValueError(
            "corpus_vocab trains from scratch only (a preset or config); a checkpoint's unused "
            "vocabulary rows are not tied, so its loss needs the full vocabulary"
        )
    return CorpusVocab.from_token_ids(
        (t for seq in sequences for t in seq.token_ids), scratch.vocab_size
    )


def _build_model(
    config: FinetuneConfig, vocab: CorpusVocab | None, device: torch.device
) -> tuple[GptOss, ModelConfig]:
    """(model to train, config of the checkpoint to write); experts dense, fp32 by default."""
    dtype = resolve_dtype(config.dtype, device)
    scratch = _from_scratch_config(config.model)
    if scratch is None:
        model = load_model(config.model, device=device, dtype=dtype, experts_format="dense")  # type: ignore[arg-type]
        return model, model.config
    trained = vocab.small_config(scratch) if vocab is not None else scratch
    model = GptOss(trained, experts_format="dense", dtype=dtype, device=device)
    init_random_weights(model, seed=config.seed, std=config.init_std)
    return model, scratch


def _trainable(model: GptOss, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    if config.lora:
        return apply_lora(
            model, rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets
        )
    return [p for p in model.parameters() if p.requires_grad]


def _save(
    model: GptOss, full_config: ModelConfig, vocab: CorpusVocab | None, config: FinetuneConfig
) -> None:
    out_dir = Path(config.out_dir)
    if config.lora and config.lora_save != "merged":
        base_name = config.model if isinstance(config.model, str | Path) else None
        adapter_dir = out_dir if config.lora_save == "adapter" else out_dir / ADAPTER_DIR
        write_adapter(
            adapter_dir,
            lora_adapter(model),
            base_model_name_or_path=None if base_name is None else str(base_name),
        )
        if config.lora_save == "adapter":
            return
    if config.lora:
        merge_lora(model)
    state = {name: t.detach().to("cpu") for name, t in model.state_dict().items()}
    if vocab is not None:
        state = vocab.expand_state(state)
    save_checkpoint(state, full_config, config.out_dir, format=config.save_format)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class _torch_threads:
    """Set torch's CPU thread count for a block, then restore it."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.previous = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)
