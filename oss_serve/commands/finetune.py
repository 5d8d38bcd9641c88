"""`oss-serve finetune`: train on harmony-rendered conversations, write an HF checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from oss_serve.commands._common import ConfigOption, fail, settings_from_flags


def finetune(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Checkpoint folder to fine-tune, or a preset (gpt-oss-tiny, ...) to train "
            "from scratch.",
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="JSONL, one Chat Completions body per line with the assistant's answers "
            "(reasoning, content, tool_calls), tools, reasoning_effort, response_format, "
            "optional date.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the HF checkpoint.")],
    lora: Annotated[
        bool, typer.Option("--lora", help="Train LoRA adapters (saved per --lora-save).")
    ] = False,
    lora_save: Annotated[
        str,
        typer.Option(
            "--lora-save",
            help="merged (a full checkpoint in --out), adapter (a PEFT adapter folder in --out, "
            "to serve with --lora-modules), or both (the adapter in --out/adapter).",
        ),
    ] = "both",
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1)] = 8,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha")] = 16.0,
    lora_targets: Annotated[
        str, typer.Option("--lora-targets", help="Comma-separated: attention, experts.")
    ] = "attention,experts",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 1,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.0,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps", min=0)] = None,
    max_batch_tokens: Annotated[int, typer.Option("--max-batch-tokens", min=1)] = 4096,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", min=2)] = 4096,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", help="Held-out share of the conversations.")
    ] = 0.1,
    gradient_checkpointing: Annotated[
        bool,
        typer.Option("--gradient-checkpointing", help="Recompute layer activations in backward."),
    ] = False,
    corpus_vocab: Annotated[
        bool,
        typer.Option(
            "--corpus-vocab",
            help="From scratch only: train on the corpus's tokens (exact full-vocabulary loss, "
            "much faster for tiny models); the checkpoint still has the full vocabulary.",
        ),
    ] = False,
    save_format: Annotated[
        str, typer.Option("--save-format", help="hf-dense or hf-mxfp4.")
    ] = "hf-dense",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
    config: ConfigOption = None,
) -> None:
    """Fine-tune (full or LoRA) on a JSONL of chat conversations; writes an HF checkpoint."""
    settings_from_flags(config)
    if save_format not in ("hf-dense", "hf-mxfp4"):
        fail(f"--save-format must be hf-dense or hf-mxfp4, not {save_format!r}")
    if lora_save not in ("merged", "adapter", "both"):
        fail(f"--lora-save must be merged, adapter or both, not {lora_save!r}")
    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {device!r}")
    from oss_serve.workers.training import FinetuneConfig
    from oss_serve.workers.training import finetune as run_finetune

    try:
        result = run_finetune(
            FinetuneConfig(
                model=model,
                data=data,
                out_dir=out,
                epochs=epochs,
                max_steps=max_steps,
                lr=lr,
                weight_decay=weight_decay,
                warmup_steps=warmup_steps,
                max_batch_tokens=max_batch_tokens,
                max_seq_len=max_seq_len,
                eval_fraction=eval_fraction,
                lora=lora,
                lora_rank=lora_rank,
                lora_alpha=lora_alpha,
                lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
                lora_save=lora_save,  # type: ignore[arg-type]
                gradient_checkpointing=gradient_checkpointing,
                corpus_vocab=corpus_vocab,
                save_format=save_format,  # type: ignore[arg-type]
                seed=seed,
                device=device,
                threads=threads,
            )
        )
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(
        f"held-out loss {result.initial_eval_loss:.4f} -> {result.final_eval_loss:.4f} "
        f"({result.steps} steps, {result.train_seconds:.1f} s, peak RSS "
        f"{result.peak_rss_mib:.0f} MiB)"
    )
    if not lora or lora_save != "adapter":
        typer.echo(f"checkpoint: {result.out_dir}")
    if lora and lora_save != "merged":
        adapter_dir = result.out_dir / "adapter" if lora_save == "both" else result.out_dir
        typer.echo(f"LoRA adapter (PEFT): {adapter_dir}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
