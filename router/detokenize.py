"""Token ids to text, incrementally, on the router (replicas send only token ids).

A UTF-8 character split across tokens is emitted with its last byte, so the chunks'
texts concatenate to the decoding of the whole; a resumed request therefore streams
the same text as an undisturbed one.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from oss_serve.common.vocab import STARTOFTEXT, o200k_harmony


class Detokenizer:
    def __init__(self, *, skip_special_tokens: bool = False) -> None:
        self._encoding = o200k_harmony()
        self._skip_special = skip_special_tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_ids: Iterable[int], *, final: bool = False) -> str:
        data = b"".join(
            self._encoding.decode_single_token_bytes(t)
            for t in token_ids
            if not (self._skip_special and t >= STARTOFTEXT)
        )
        return self._decoder.decode(data, final=final)
