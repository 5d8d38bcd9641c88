"""Fine-tuning gpt-oss on harmony-rendered conversations (loss on assistant tokens only).

`finetune(FinetuneConfig(...))` trains (full or LoRA, or from scratch) and writes an HF
checkpoint that load_model, the engine and transformers read; `oss-serve finetune` is its CLI.
"""

from oss_serve.workers.training.data import DataError, load_conversations
from oss_serve.workers.training.run import FinetuneConfig, FinetuneResult, finetune

__all__ = ["DataError", "FinetuneConfig", "FinetuneResult", "finetune", "load_conversations"]
