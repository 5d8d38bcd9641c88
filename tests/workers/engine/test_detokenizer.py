"""Incremental detokenization: UTF-8 across token boundaries, stop strings, special tokens."""

from __future__ import annotations

import pytest

from oss_serve.common.vocab import END, START, o200k_harmony
from oss_serve.workers.engine.detokenizer import IncrementalDetokenizer

pytestmark = pytest.mark.unit


def _stream(detok: IncrementalDetokenizer, token_ids: list[int]) -> list[str]:
    """Feed one token at a time; return what could be streamed after each."""
    sent, pieces = 0, []
    for token in token_ids:
        detok.update([token])
        pieces.append(detok.text[sent : detok.streamable_length])
        sent = detok.streamable_length
    detok.update([], final=True)
    pieces.append(detok.text[sent:])
    return pieces


def test_multibyte_characters_split_across_tokens_never_stream_broken():
    tokenizer = o200k_harmony()
    text = "naïve 🤖🦙 日本語 ok"
    token_ids = tokenizer.encode(text)
    split = [t for t in token_ids if len(tokenizer.decode_single_token_bytes(t).decode("utf-8", "replace")) and
             "\ufffd" in tokenizer.decode_single_token_bytes(t).decode("utf-8", "replace")]  # fmt: skip
    assert split, "the sample should contain tokens that are partial UTF-8"
    pieces = _stream(IncrementalDetokenizer(tokenizer), token_ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_stop_string_across_tokens_cuts_the_text_and_is_never_partly_streamed():
    tokenizer = o200k_harmony()
    token_ids = tokenizer.encode("The answer is 42. STOP here please")
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP here"])
    pieces = _stream(detok, token_ids)
    assert detok.stop_string == "STOP here"
    assert detok.text == "The answer is 42. "
    assert "".join(pieces) == "The answer is 42. "


def test_stop_string_can_be_kept_in_the_output():
    tokenizer = o200k_harmony()
    detok = IncrementalDetokenizer(tokenizer, stop=["42"], include_stop_str_in_output=True)
    detok.update(tokenizer.encode("The answer is 42 and more"))
    assert detok.text == "The answer is 42"


def test_special_tokens_are_skipped_unless_asked_for():
    tokenizer = o200k_harmony()
    ids = [START, *tokenizer.encode("assistant"), END]
    skipping = IncrementalDetokenizer(tokenizer)
    skipping.update(ids, final=True)
    keeping = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    keeping.update(ids, final=True)
    assert skipping.text == "assistant"
    assert keeping.text == "<|start|>assistant<|end|>"
