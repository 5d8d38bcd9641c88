"""Incremental detokenization for streaming, UTF-8 safe across token boundaries, and stop strings.

Tokens are byte sequences (o200k BPE): a character may span several tokens, so bytes go
through an incremental UTF-8 decoder that holds an incomplete tail until the next token
completes it. Stop strings are searched in the decoded text; while one could still be
forming, up to len(longest stop) - 1 characters are held back from the stream.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any, Protocol


class Tokenizer(Protocol):
    """The slice of tiktoken.Encoding the engine uses."""

    def decode_single_token_bytes(self, token: int) -> bytes: ...

    def encode(self, text: str, *, allowed_special: Any = ...) -> list[int]: ...


def is_special_token(token_id: int) -> bool:
    from oss_serve.common.vocab import STARTOFTEXT

    return token_id >= STARTOFTEXT


class IncrementalDetokenizer:
    """One sequence's text so far, cut at the first stop string."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self._final = False
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.stop_string: str | None = None

    def update(self, token_ids: Sequence[int], *, final: bool = False) -> None:
        """Decode new tokens (up to a stop string); `final` flushes an incomplete UTF-8 tail."""
        if self.stop_string is not None:
            return
        for token_id in token_ids:
            if self.skip_special_tokens and is_special_token(token_id):
                continue
            self._append(self.tokenizer.decode_single_token_bytes(token_id))
            if self.stop_string is not None:
                return
        if final:
            self._append(b"", final=True)
            self._final = True

    @property
    def streamable_length(self) -> int:
        """How much of `text` can be sent: all of it unless a stop string may still be forming."""
        if self._final or self.stop_string is not None:
            return len(self.text)
        return max(0, len(self.text) - self._hold)

    def _append(self, data: bytes, *, final: bool = False) -> None:
        new_text = self._decoder.decode(data, final=final)
        if not new_text:
            return
        start = max(0, len(self.text) - self._hold)
        self.text += new_text
        if self.stop:
            self._find_stop(start)

    def _find_stop(self, start: int) -> None:
        best: tuple[int, str] | None = None
        for stop in self.stop:
            at = self.text.find(stop, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return
        at, stop = best
        self.stop_string = stop
        self.text = (
            self.text[: at + len(stop)] if self.include_stop_str_in_output else self.text[:at]
        )


def decode_token(tokenizer: Tokenizer, token_id: int) -> str:
    """One token's text for logprobs (partial UTF-8 shows as replacement characters)."""
    return tokenizer.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")
