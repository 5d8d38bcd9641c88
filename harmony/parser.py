"""Incremental parser of gpt-oss output tokens into reasoning / content / tool-call events.

Fed token ids as the engine produces them (one at a time or in chunks; the events are
the same either way once neighbouring deltas are merged). It is forgiving where models
and engines are sloppy, and never raises on model output:
- the first message has no `<|start|>` (the prompt ended with `<|start|>assistant`), and
  later ones may miss it too (`<|end|><|channel|>final...`);
- the recipient may sit before or after the channel (`assistant to=functions.f<|channel|>
  commentary` or `<|channel|>commentary to=functions.f`), with or without `<|constrain|>`;
- header tokens and channel names never reach the text; special tokens inside content
  are dropped; text where a header should be becomes content, not an error;
- a header that never reaches `<|message|>` is salvaged as content after a few dozen tokens.
"""

from __future__ import annotations

import codecs
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import Enum

from oss_serve.common.vocab import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    MESSAGE,
    RETURN,
    START,
    STARTOFTEXT,
    STOP_TOKEN_IDS,
    o200k_harmony,
)
from oss_serve.harmony.conversation import FUNCTIONS_NAMESPACE, VALID_CHANNELS
from oss_serve.harmony.events import (
    BuiltinToolCall,
    CompletionFold,
    ContentDelta,
    HarmonyEvent,
    MessageEnd,
    ParsedCompletion,
    ReasoningDelta,
    StopReason,
    ToolCallArgumentsDelta,
    ToolCallStart,
    coalesce,
)

MAX_HEADER_TOKENS = 64
_NOT_TOOL_RECIPIENTS = ("all", "user", "assistant")
_ROLES = ("assistant", "user", "system", "developer", "tool")
_CONTENT_TYPES = ("json", "code", "text")
_WORD = re.compile(r"\S+")


def stop_token_ids() -> tuple[int, ...]:
    """Generation stops on `<|return|>`, `<|call|>`, `<|endoftext|>`; never on `<|end|>`."""
    return STOP_TOKEN_IDS


class _Kind(Enum):
    REASONING = "reasoning"
    CONTENT = "content"
    TOOL_CALL = "tool_call"
    BUILTIN = "builtin"


class _State(Enum):
    HEADER = "header"
    CONTENT = "content"
    BETWEEN = "between"
    DONE = "done"


@dataclass
class _Header:
    role: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    leftover: str = ""  # header text that is none of the above (only used for salvage)


def _is_text(token: int) -> bool:
    return 0 <= token < STARTOFTEXT


def _normalize_channel(word: str) -> str:
    if word in VALID_CHANNELS:
        return word
    # e.g. "––commentary" (openai/harmony#38): keep the known channel the word contains.
    return next((channel for channel in VALID_CHANNELS if channel in word), word)


def _parse_header(segments: list[tuple[int | None, str]]) -> _Header:
    """Role, channel, recipient and content type from `(marker, text)` segments of a header.

    A word is only taken for what it plausibly is (a known role or tool author, a known
    channel, `to=...`, a content type); the rest is kept as `leftover` for salvage.
    """
    header = _Header()
    for marker, text in segments:
        unexplained: list[re.Match[str]] = []
        for index, word_match in enumerate(_WORD.finditer(text)):
            word = word_match.group()
            if word.startswith("to=") and len(word) > 3 and header.recipient is None:
                header.recipient = word[3:]
            elif index == 0 and marker is None and header.role is None and _is_author(word):
                header.role = word
            elif index == 0 and marker == CHANNEL and header.channel is None:
                channel = _normalize_channel(word)
                if channel in VALID_CHANNELS:
                    header.channel = channel
                else:
                    unexplained.append(word_match)
            elif index == 0 and marker == CONSTRAIN and header.content_type is None:
                header.content_type = f"<|constrain|>{word}"
            elif word in _CONTENT_TYPES and header.content_type is None and not unexplained:
                header.content_type = word
            else:
                unexplained.append(word_match)
        if unexplained:
            header.leftover = text[unexplained[0].start() :]
    return header


def _is_author(word: str) -> bool:
    return word in _ROLES or "." in word


class HarmonyStreamParser:
    """Stateful parser for one completion; `feed` returns the events of the new tokens.

    `tool_call_id_prefix` makes call ids deterministic (`{prefix}{index}`); by default a
    random `call_<hex>_` prefix. `function_names` lets a recipient without the
    `functions.` namespace (a slip some checkpoints make) still count as a function call.
    """

    def __init__(
        self,
        *,
        tool_call_id_prefix: str | None = None,
        function_names: Collection[str] = (),
        max_header_tokens: int = MAX_HEADER_TOKENS,
    ) -> None:
        self._encoding = o200k_harmony()
        self._id_prefix = tool_call_id_prefix or f"call_{secrets.token_hex(8)}_"
        self._function_names = frozenset(function_names)
        self._max_header_tokens = max_header_tokens
        self._state = _State.HEADER
        self._header_tokens: list[int] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._header = _Header()
        self._kind = _Kind.CONTENT
        self._tool_index = -1
        self._builtin_text: list[str] = []
        self._called = False
        self.reasoning_tokens = 0
        self._fold = CompletionFold()

    @property
    def result(self) -> ParsedCompletion:
        """Everything parsed so far, folded (reasoning, content, tool calls, finish reason)."""
        return self._fold.completion(reasoning_tokens=self.reasoning_tokens)

    @property
    def finish_reason(self) -> StopReason | None:
        return self._fold.finish_reason

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, token_ids: Iterable[int]) -> list[HarmonyEvent]:
        events: list[HarmonyEvent] = []
        for token in token_ids:
            self._step(int(token), events)
        return self._publish(events)

    def finish(self) -> list[HarmonyEvent]:
        """The generation ended without a stop token (max tokens, stop string, abort)."""
        events: list[HarmonyEvent] = []
        if self._state is _State.CONTENT:
            self._end_message(events, "length")
        elif self._state is _State.HEADER and self._header_tokens:
            self._salvage_header(events, "length")
        if self._state is not _State.DONE:
            self._fold.finish_reason = "length"
            self._state = _State.DONE
        return self._publish(events)

    def _publish(self, events: list[HarmonyEvent]) -> list[HarmonyEvent]:
        events = coalesce(events)
        for event in events:
            self._fold.apply(event)
        return events

    # -- token steps -------------------------------------------------------------------------

    def _step(self, token: int, events: list[HarmonyEvent]) -> None:
        if self._state is _State.HEADER:
            self._header_step(token, events)
        elif self._state is _State.CONTENT:
            self._content_step(token, events)
        elif self._state is _State.BETWEEN:
            self._between_step(token, events)

    def _between_step(self, token: int, events: list[HarmonyEvent]) -> None:
        if token == START:
            self._begin_header([])
        elif token == CHANNEL:  # the model left out <|start|>assistant
            self._begin_header([CHANNEL])
        elif token in (RETURN, ENDOFTEXT, CALL):
            self._stop(token)
        elif token == MESSAGE:
            self._open_message(_Header(), events)
        elif _is_text(token):  # text with no header at all: show it rather than lose it
            self._open_message(_Header(), events)
            self._content_step(token, events)

    def _header_step(self, token: int, events: list[HarmonyEvent]) -> None:
        if token == MESSAGE:
            self._open_message(self._parsed_header(), events)
        elif token == START:
            self._header_tokens = []
        elif token in (CHANNEL, CONSTRAIN) or _is_text(token):
            self._header_tokens.append(token)
            if len(self._header_tokens) > self._max_header_tokens:
                self._salvage_header(events, None)
        elif token in (END, RETURN, ENDOFTEXT, CALL):
            self._salvage_header(events, self._stop_reason(token) if token != END else None)
            if token != END:
                self._stop(token)

    def _content_step(self, token: int, events: list[HarmonyEvent]) -> None:
        if _is_text(token):
            self._emit_bytes(self._encoding.decode_single_token_bytes(token), events)
            if self._kind is _Kind.REASONING:
                self.reasoning_tokens += 1
        elif token == END:
            self._end_message(events, None)
        elif token in (RETURN, ENDOFTEXT, CALL):
            self._end_message(events, self._stop_reason(token))
            self._stop(token)
        elif token == START:  # a new message without <|end|> before it
            self._end_message(events, None)
            self._begin_header([])
        elif token == CHANNEL:
            self._end_message(events, None)
            self._begin_header([CHANNEL])

    # -- messages ----------------------------------------------------------------------------

    def _begin_header(self, tokens: list[int]) -> None:
        self._state = _State.HEADER
        self._header_tokens = tokens

    def _parsed_header(self) -> _Header:
        segments: list[tuple[int | None, str]] = []
        marker: int | None = None
        run: list[int] = []
        for token in self._header_tokens:
            if token in (CHANNEL, CONSTRAIN):
                segments.append((marker, self._encoding.decode(run)))
                marker, run = token, []
            else:
                run.append(token)
        segments.append((marker, self._encoding.decode(run)))
        return _parse_header(segments)

    def _salvage_header(self, events: list[HarmonyEvent], stop: StopReason | None) -> None:
        """A header that never reached <|message|>: its unexplained text becomes content."""
        header = self._parsed_header()
        leftover = header.leftover
        self._header_tokens = []
        if not leftover:
            self._state = _State.BETWEEN
            return
        self._open_message(header, events)
        self._emit_bytes(leftover.encode(), events)
        if stop is not None or self._state is _State.HEADER:
            self._end_message(events, stop)

    def _open_message(self, header: _Header, events: list[HarmonyEvent]) -> None:
        self._header = header
        self._kind = self._classify(header)
        self._decoder.reset()
        self._builtin_text = []
        self._state = _State.CONTENT
        if self._kind is _Kind.TOOL_CALL:
            self._tool_index += 1
            self._called = True
            name = self._function_name(header.recipient or "")
            events.append(
                ToolCallStart(self._tool_index, f"{self._id_prefix}{self._tool_index}", name)
            )
        elif self._kind is _Kind.BUILTIN:
            self._called = True

    def _classify(self, header: _Header) -> _Kind:
        if header.role not in (None, "assistant"):
            return _Kind.CONTENT
        recipient = header.recipient
        if recipient is not None and recipient not in _NOT_TOOL_RECIPIENTS:
            if self._function_name(recipient):
                return _Kind.TOOL_CALL
            return _Kind.BUILTIN
        if header.channel == "analysis":
            return _Kind.REASONING
        return _Kind.CONTENT

    def _function_name(self, recipient: str) -> str:
        prefix = f"{FUNCTIONS_NAMESPACE}."
        if recipient.startswith(prefix) and len(recipient) > len(prefix):
            return recipient[len(prefix) :]
        return recipient if recipient in self._function_names else ""

    def _emit_bytes(self, data: bytes, events: list[HarmonyEvent], *, final: bool = False) -> None:
        text = self._decoder.decode(data, final=final)
        if not text:
            return
        if self._kind is _Kind.REASONING:
            events.append(ReasoningDelta(text))
        elif self._kind is _Kind.TOOL_CALL:
            events.append(ToolCallArgumentsDelta(self._tool_index, text))
        elif self._kind is _Kind.BUILTIN:
            self._builtin_text.append(text)
        else:
            channel = "commentary" if self._header.channel == "commentary" else "final"
            events.append(ContentDelta(text, channel))

    def _end_message(self, events: list[HarmonyEvent], stop: StopReason | None) -> None:
        self._emit_bytes(b"", events, final=True)
        header = self._header
        if self._kind is _Kind.BUILTIN:
            recipient = header.recipient or ""
            events.append(BuiltinToolCall(recipient, header.channel, "".join(self._builtin_text)))
        events.append(MessageEnd(header.channel, header.recipient, stop))
        self._state = _State.BETWEEN

    def _stop_reason(self, token: int) -> StopReason:
        return "tool_calls" if token == CALL and self._called else "stop"

    def _stop(self, token: int) -> None:
        self._fold.finish_reason = self._stop_reason(token)
        self._state = _State.DONE


def parse_completion(
    token_ids: Iterable[int],
    *,
    tool_call_id_prefix: str | None = None,
    function_names: Collection[str] = (),
) -> ParsedCompletion:
    """Parse a whole completion at once (non-streaming responses)."""
    parser = HarmonyStreamParser(
        tool_call_id_prefix=tool_call_id_prefix, function_names=function_names
    )
    parser.feed(token_ids)
    parser.finish()
    return parser.result
