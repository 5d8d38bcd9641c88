"""What the load generator sends: seeded conversations for each workload kind.

A workload is an endless, seeded stream of `Session`s. A session is one conversation:
an optional shared system prompt and one or more user turns; turn i is sent with the
history of the earlier turns, including the replies the server actually gave, so that
multi-turn runs exercise prefix caching the way real chats do. Single-shot workloads
are sessions of one turn.

Prompt text is made of o200k tokens that round-trip exactly (" word" pieces), so a
requested input length is the number of tokens in the user content; the chat template
of the server adds its own few tokens on top.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

WorkloadKind = Literal[
    "synthetic", "multi-turn", "long-context", "tool-calling", "structured", "reasoning", "dataset"
]
WORKLOAD_KINDS: tuple[str, ...] = (
    "synthetic",
    "multi-turn",
    "long-context",
    "tool-calling",
    "structured",
    "reasoning",
    "dataset",
)
REASONING_EFFORTS = ("low", "medium", "high")
_WORD_TOKEN = re.compile(r"^ [a-z]{3,9}$")


class WorkloadError(ValueError):
    """A workload option or dataset line is invalid; the message names it."""


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts drawn per request: `N`, `uniform:LO:HI`, `normal:MEAN:STD` or `exp:MEAN`."""

    kind: Literal["fixed", "uniform", "normal", "exp"]
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str | int, option: str = "length") -> LengthDistribution:
        text = str(spec).strip().lower()
        parts = text.split(":")
        try:
            if len(parts) == 1:
                dist = cls("fixed", float(int(parts[0])))
            elif parts[0] == "uniform" and len(parts) == 3:
                dist = cls("uniform", float(int(parts[1])), float(int(parts[2])))
            elif parts[0] == "normal" and len(parts) == 3:
                dist = cls("normal", float(parts[1]), float(parts[2]))
            elif parts[0] == "exp" and len(parts) == 2:
                dist = cls("exp", float(parts[1]))
            else:
                raise ValueError(text)
        except ValueError:
            raise WorkloadError(
                f"{option}: {spec!r} is not N, uniform:LO:HI, normal:MEAN:STD or exp:MEAN"
            ) from None
        if dist.a < 1 or (dist.kind == "uniform" and dist.b < dist.a) or dist.b < 0:
            raise WorkloadError(f"{option}: {spec!r} must describe lengths of at least 1 token")
        return dist

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.randint(int(self.a), int(self.b))
        elif self.kind == "normal":
            value = round(rng.gauss(self.a, self.b))
        else:
            value = round(rng.expovariate(1.0 / self.a))
        return max(1, int(value))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "exp":
            return f"exp:{self.a:g}"
        return f"{self.kind}:{self.a:g}:{self.b:g}"


@functools.cache
def _word_token_ids() -> tuple[int, ...]:
    """o200k ids whose text is a space and 3-9 lowercase letters: they re-encode one to one."""
    from oss_serve.common.vocab import o200k_harmony

    encoder = o200k_harmony()
    ids: list[int] = []
    for token_id in range(encoder.n_vocab):
        try:
            piece = encoder.decode_single_token_bytes(token_id)
        except KeyError:
            continue
        if piece.isascii() and _WORD_TOKEN.match(piece.decode("ascii")):
            ids.append(token_id)
    return tuple(ids)


def synthetic_text(num_tokens: int, rng: random.Random) -> str:
    """Text that o200k encodes to exactly `num_tokens` tokens."""
    from oss_serve.common.vocab import o200k_harmony

    pool = _word_token_ids()
    return o200k_harmony().decode([rng.choice(pool) for _ in range(num_tokens)])


def count_tokens(text: str) -> int:
    """o200k token count of plain text (special-token strings count as ordinary text)."""
    from oss_serve.common.vocab import o200k_harmony

    return len(o200k_harmony().encode(text, disallowed_special=()))


@dataclass(frozen=True)
class ChatTurn:
    """One request of a session: the new user text (or a whole message list) and its options."""

    max_tokens: int
    user_content: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None  # datasets: sent as given
    extra: dict[str, Any] = field(default_factory=dict)  # tools, response_format, ...
    tag: str = ""  # label the report groups by, e.g. "effort=high"


@dataclass(frozen=True)
class Session:
    """One conversation; `messages_for(i, replies)` is what turn i sends."""

    session_id: int
    turns: tuple[ChatTurn, ...]
    system_prompt: str | None = None

    def messages_for(self, turn_index: int, replies: Sequence[str]) -> list[dict[str, Any]]:
        turn = self.turns[turn_index]
        if turn.messages is not None:
            return [dict(message) for message in turn.messages]
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        for earlier, reply in zip(self.turns[:turn_index], replies, strict=False):
            messages.append({"role": "user", "content": earlier.user_content})
            messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": turn.user_content})
        return messages


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that shapes the requests; the CLI fills it from flags."""

    kind: WorkloadKind = "synthetic"
    input_len: LengthDistribution | None = None  # None = the kind's default
    output_len: LengthDistribution | None = None
    turns: int = 4
    num_system_prompts: int = 4
    system_prompt_len: int = 1024
    reasoning_efforts: tuple[str, ...] = ()
    dataset_path: Path | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            raise WorkloadError(
                f"workload: {self.kind!r} is not one of {', '.join(WORKLOAD_KINDS)}"
            )
        for effort in self.reasoning_efforts:
            if effort not in REASONING_EFFORTS:
                raise WorkloadError(f"reasoning-effort: {effort!r} is not low, medium or high")
        if self.kind == "dataset" and self.dataset_path is None:
            raise WorkloadError("workload dataset needs --dataset PATH (a JSONL file)")
        if self.turns < 1 or self.num_system_prompts < 1 or self.system_prompt_len < 1:
            raise WorkloadError("turns, num-system-prompts and system-prompt-len must be >= 1")


# Default (input, output) lengths per kind when the flags leave them out.
_DEFAULT_LENGTHS: dict[str, tuple[str, str]] = {
    "synthetic": ("uniform:128:1024", "uniform:64:512"),
    "multi-turn": ("uniform:32:256", "uniform:64:256"),
    "long-context": ("32768", "128"),
    "tool-calling": ("256", "128"),
    "structured": ("256", "256"),
    "reasoning": ("256", "1024"),
    "dataset": ("256", "256"),
}

WEATHER_TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Flights between two airports on a date.",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "destination": {"type": "string"},
                    "date": {"type": "string", "description": "YYYY-MM-DD"},
                },
                "required": ["origin", "destination", "date"],
            },
        },
    },
)
PERSON_SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "skills": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "age", "skills"],
            "additionalProperties": False,
        },
    },
}
_CITIES = ("Paris", "Lagos", "Osaka", "Lima", "Oslo", "Perth", "Quito", "Hanoi")


class Workload:
    """An endless seeded stream of sessions for one `WorkloadSpec`."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        default_in, default_out = _DEFAULT_LENGTHS[spec.kind]
        self.input_len = spec.input_len or LengthDistribution.parse(default_in)
        self.output_len = spec.output_len or LengthDistribution.parse(default_out)
        efforts = spec.reasoning_efforts
        if not efforts and spec.kind == "reasoning":
            efforts = REASONING_EFFORTS
        self.efforts = efforts
        self._dataset = load_chat_dataset(spec.dataset_path) if spec.kind == "dataset" else []

    def describe(self) -> dict[str, Any]:
        """The parameters that shaped the requests, for the report."""
        spec = self.spec
        info: dict[str, Any] = {
            "kind": spec.kind,
            "input_len": str(self.input_len),
            "output_len": str(self.output_len),
            "reasoning_efforts": list(self.efforts),
            "ignore_eos": spec.ignore_eos,
        }
        if spec.kind == "multi-turn":
            info.update(
                turns=spec.turns,
                num_system_prompts=spec.num_system_prompts,
                system_prompt_len=spec.system_prompt_len,
            )
        if spec.dataset_path is not None:
            info.update(dataset=str(spec.dataset_path), dataset_rows=len(self._dataset))
        return info

    def sessions(self, seed: int) -> Iterator[Session]:
        rng = random.Random(seed)
        system_prompts = [
            synthetic_text(self.spec.system_prompt_len, rng)
            for _ in range(self.spec.num_system_prompts if self.spec.kind == "multi-turn" else 0)
        ]
        order: list[int] = []
        for session_id in itertools.count():
            if self.spec.kind == "dataset":
                if not order:
                    order = list(range(len(self._dataset)))
                    rng.shuffle(order)
                yield self._dataset_session(session_id, order.pop(), rng)
            elif self.spec.kind == "multi-turn":
                turns = tuple(self._turn(rng) for _ in range(self.spec.turns))
                yield Session(session_id, turns, rng.choice(system_prompts))
            else:
                yield Session(session_id, (self._turn(rng),))

    def _turn(self, rng: random.Random) -> ChatTurn:
        kind = self.spec.kind
        text = synthetic_text(self.input_len.sample(rng), rng)
        extra: dict[str, Any] = {}
        if kind == "tool-calling":
            city = rng.choice(_CITIES)
            text += f"\nWhat is the weather in {city} right now? Call the get_weather tool."
            extra.update(tools=list(WEATHER_TOOLS), tool_choice="auto")
        elif kind == "structured":
            text += "\nDescribe a fictional engineer as JSON with name, age and skills."
            extra["response_format"] = PERSON_SCHEMA
        elif kind == "long-context":
            text += "\nSummarise the text above in one paragraph."
        return self._with_options(ChatTurn(self.output_len.sample(rng), text, extra=extra), rng)

    def _with_options(self, turn: ChatTurn, rng: random.Random) -> ChatTurn:
        extra = dict(turn.extra)
        tag = turn.tag
        if self.efforts and "reasoning_effort" not in extra:
            extra["reasoning_effort"] = rng.choice(self.efforts)
        if "reasoning_effort" in extra:
            tag = f"effort={extra['reasoning_effort']}"
        if self.spec.ignore_eos:
            extra["ignore_eos"] = True
        return ChatTurn(turn.max_tokens, turn.user_content, turn.messages, extra, tag)

    def _dataset_session(self, session_id: int, row: int, rng: random.Random) -> Session:
        record = self._dataset[row]
        max_tokens = record.get("max_tokens") or self.output_len.sample(rng)
        extra: dict[str, Any] = {
            key: record[key]
            for key in ("tools", "tool_choice", "response_format", "reasoning_effort")
            if key in record
        }
        turn = ChatTurn(int(max_tokens), None, tuple(record["messages"]), extra)
        return Session(session_id, (self._with_options(turn, rng),))


def load_chat_dataset(path: Path | None) -> list[dict[str, Any]]:
    """Rows of a JSONL file in the chat format: `{"messages": [{"role", "content"}, ...], ...}`."""
    if path is None:
        raise WorkloadError("dataset: no path given")
    if not path.is_file():
        raise WorkloadError(f"dataset: {path} does not exist")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            rows.append(_parse_dataset_line(path, line_number, line))
    if not rows:
        raise WorkloadError(f"dataset: {path} has no rows")
    return rows


def _parse_dataset_line(path: Path, line_number: int, line: str) -> dict[str, Any]:
    where = f"dataset {path}:{line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise WorkloadError(f"{where}: not JSON ({err.msg})") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise WorkloadError(f"{where}: needs a non-empty `messages` list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise WorkloadError(f"{where}: messages[{index}] needs a string `role`")
        if "content" not in message and "tool_calls" not in message:
            raise WorkloadError(f"{where}: messages[{index}] needs `content`")
    max_tokens = record.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise WorkloadError(f"{where}: `max_tokens` must be a positive integer")
    return dict(record)
