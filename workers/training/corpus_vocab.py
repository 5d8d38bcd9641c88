"""Train from scratch on the corpus's own tokens, save a normal full-vocabulary checkpoint.

The unembedding over 201,088 rows dominates a tiny model's training cost, yet a corpus uses a
few hundred distinct tokens. A model trained from scratch may tie every token the corpus never
uses to ONE shared embedding row and ONE shared unembedding row. Such a model is exactly a
model with |S| + 1 rows (S = the corpus's tokens, plus the shared "other" row), and its
full-vocabulary log-softmax needs only those rows:

    log p(t) = z_t - logsumexp(z_S, z_other + log(V - |S|))   for t in S

So training the small model on this loss IS training the full model on the full-vocabulary
loss, and `expand_state` writes the full model: its logits equal the small model's on S, and
every other token has the shared logit (so greedy decoding picks the same tokens, and an
unseen input token reads the shared embedding). Not for pretrained models: their unused rows
are not tied.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from oss_serve.common.vocab import STARTOFTEXT
from oss_serve.harmony.training import TrainingSequence
from oss_serve.workers.model.config import ModelConfig

_VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class CorpusVocab:
    """The corpus's token ids (sorted) inside a full vocabulary of `full_size` ids."""

    token_ids: tuple[int, ...]
    full_size: int

    @classmethod
    def from_token_ids(cls, token_ids: Iterable[int], full_size: int) -> CorpusVocab:
        ids = tuple(sorted(set(token_ids)))
        if not ids:
            raise ValueError("corpus vocabulary: no tokens")
        if ids[0] < 0 or ids[-1] >= full_size:
            raise ValueError(f"corpus vocabulary: token ids must lie in [0, {full_size})")
        if len(ids) >= full_size:
            raise ValueError("corpus vocabulary: the corpus uses every token; train normally")
        return cls(ids, full_size)

    @property
    def other_row(self) -> int:
        """The small model's row shared by every token outside the corpus."""
        return len(self.token_ids)

    @property
    def num_rows(self) -> int:
        return len(self.token_ids) + 1

    @property
    def log_num_other(self) -> float:
        """log of how many full-vocabulary tokens the shared row stands for."""
        return math.log(self.full_size - len(self.token_ids))

    def small_config(self, config: ModelConfig) -> ModelConfig:
        """The config of the model actually trained (vocabulary = the corpus's rows + 1)."""
        if config.vocab_size != self.full_size:
            raise ValueError(
                f"corpus vocabulary of {self.full_size} ids vs model vocab_size {config.vocab_size}"
            )
        return config.with_(vocab_size=self.num_rows)

    def token_map(self) -> torch.Tensor:
        """full id -> small row (the shared row for tokens outside the corpus)."""
        mapping = torch.full((self.full_size,), self.other_row, dtype=torch.long)
        mapping[torch.tensor(self.token_ids)] = torch.arange(len(self.token_ids))
        return mapping

    def full_logits(self, small_logits: torch.Tensor) -> torch.Tensor:
        """The full model's logits over the small model's rows, the shared row weighted by its
        multiplicity: log-softmax over these equals the full vocabulary's at corpus tokens."""
        offset = torch.zeros(self.num_rows, dtype=small_logits.dtype, device=small_logits.device)
        offset[self.other_row] = self.log_num_other
        return small_logits + offset

    def unseen_token_id(self) -> int:
        """An ordinary text token the corpus does not use (it reads the shared row)."""
        used = set(self.token_ids)
        return next(i for i in range(STARTOFTEXT) if i not in used)

    def with_unknown_tokens(
        self, sequence: TrainingSequence, rate: float, rng: random.Random
    ) -> TrainingSequence:
        """`sequence` with about `rate` of its prompt's text tokens replaced by an unseen token.

        Trains the shared embedding row, which every token outside the corpus reads at serving
        time: the model learns to carry on around words it never saw. Special tokens and the
        assistant's tokens (the targets) are kept.
        """
        unseen = self.unseen_token_id()
        tokens = [
            unseen if not is_target and token < STARTOFTEXT and rng.random() < rate else token
            for token, is_target in zip(sequence.token_ids, sequence.assistant_mask, strict=True)
        ]
        return TrainingSequence(tuple(tokens), sequence.assistant_mask)

    def expand_state(self, small_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full model's state dict: corpus rows in place, the shared row everywhere else."""
        rows = self.token_map()
        full = dict(small_state)
        for name in _VOCAB_TENSORS:
            full[name] = small_state[name].detach()[rows.to(small_state[name].device)].clone()
        return full
