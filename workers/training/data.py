"""Training data: JSONL conversations -> harmony token sequences -> packed flat batches.

A line is a Chat Completions request body whose messages include the assistant's answers
(`reasoning`, `content`, `tool_calls`), with `tools`, `reasoning_effort`, `response_format`
as in a request, an optional `date` (YYYY-MM-DD) for the harmony system message, and optional
`builtin_tools` (`["browser", "python"]`: what the server declares there) and optional
`mcp_servers` (`[{"server_label", "server_description", "tools": [{"name", "description",
"input_schema"}]}]`: MCP servers' tools as the router declares them, one namespace each). A
turn in which the server ran tool calls gives its messages as raw harmony messages (see
tool_loop).
Batches are packed like the engine's: several whole sequences in one flat batch with their
own attention spans (no padding, no attention across sequences).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oss_serve.harmony.errors import HarmonyRequestError
from oss_serve.harmony.request_fields import as_list, as_mapping, optional_str, required_str
from oss_serve.harmony.server_tools import mcp_tool_spec
from oss_serve.harmony.tool_schema import ToolNamespace
from oss_serve.harmony.training import TrainingSequence, render_chat_for_training
from oss_serve.workers.model.attention_metadata import AttentionMetadata
from oss_serve.workers.training.tool_loop import is_tool_loop, render_tool_loop_for_training

DATE_FIELD = "date"
BUILTIN_TOOLS_FIELD = "builtin_tools"
MCP_SERVERS_FIELD = "mcp_servers"


class DataError(ValueError):
    """A training file or line that cannot be used: names the file, line and field."""


def load_conversations(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of conversations (blank lines skipped)."""
    return [conversation for _, conversation in read_jsonl(path)]


def read_jsonl(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(`file:line` label, conversation) for every non-blank line of a JSONL file."""
    source = Path(path)
    if not source.is_file():
        raise DataError(f"--data {source}: no such file")
    entries = []
    with source.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            label = f"{source}:{line_no}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{label}: not JSON ({err.msg})") from err
            if not isinstance(value, dict):
                raise DataError(f"{label}: expected a JSON object (a chat request)")
            entries.append((label, value))
    if not entries:
        raise DataError(f"--data {source}: no conversations")
    return entries


def render_conversations(
    conversations: Sequence[dict[str, Any]], labels: Sequence[str] | None = None
) -> list[list[TrainingSequence]]:
    """Each conversation's training sequences (one per assistant completion); errors name
    the conversation by its label (default `conversation N`)."""
    rendered = []
    for index, conversation in enumerate(conversations):
        body = dict(conversation)
        date = body.pop(DATE_FIELD, None)
        builtin_tools = body.pop(BUILTIN_TOOLS_FIELD, [])
        mcp_servers = body.pop(MCP_SERVERS_FIELD, [])
        try:
            if date is not None and not isinstance(date, str):
                raise ValueError(f"{DATE_FIELD}: expected a YYYY-MM-DD string")
            if not isinstance(builtin_tools, list):
                raise ValueError(f"{BUILTIN_TOOLS_FIELD}: expected a list of tool names")
            namespaces = mcp_namespaces(mcp_servers)
            if is_tool_loop(body):
                sequence = render_tool_loop_for_training(
                    body, date=date, builtin_tools=builtin_tools, tool_namespaces=namespaces
                )
                rendered.append([sequence])
            else:
                rendered.append(
                    render_chat_for_training(
                        body, date=date, builtin_tools=builtin_tools, tool_namespaces=namespaces
                    )
                )
        except ValueError as err:  # HarmonyRequestError names the field
            label = labels[index] if labels is not None else f"conversation {index + 1}"
            raise DataError(f"{label}: {err}") from err
    return rendered


def mcp_namespaces(raw: Any) -> tuple[ToolNamespace, ...]:
    """A line's `mcp_servers` as the developer-message namespaces the router declares for
    them (the same spec function); raises ValueError naming the field."""
    servers = as_list(raw, MCP_SERVERS_FIELD)
    namespaces = []
    for index, raw_server in enumerate(servers):
        field = f"{MCP_SERVERS_FIELD}[{index}]"
        server = as_mapping(raw_server, field)
        label = required_str(server.get("server_label"), f"{field}.server_label")
        server_description = optional_str(
            server.get("server_description"), f"{field}.server_description"
        )
        specs = []
        for tool_index, raw_tool in enumerate(as_list(server.get("tools"), f"{field}.tools")):
            tool_field = f"{field}.tools[{tool_index}]"
            tool = as_mapping(raw_tool, tool_field)
            name = required_str(tool.get("name"), f"{tool_field}.name")
            description = optional_str(tool.get("description"), f"{tool_field}.description")
            schema = as_mapping(tool.get("input_schema"), f"{tool_field}.input_schema")
            try:
                specs.append(mcp_tool_spec(name, description or "", schema))
            except HarmonyRequestError as err:
                raise HarmonyRequestError(f"{tool_field}.{err.field}", err.problem) from err
        namespaces.append(ToolNamespace(label, server_description, tuple(specs)))
    return tuple(namespaces)


def split_held_out(
    items: Sequence[list[TrainingSequence]], fraction: float, seed: int
) -> tuple[list[TrainingSequence], list[TrainingSequence]]:
    """(train, held-out) sequences, split by conversation so no prompt leaks across."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = round(len(items) * fraction)
    if fraction > 0 and held == 0 and len(items) > 1:
        held = 1
    held_out = [seq for i in order[:held] for seq in items[i]]
    train = [seq for i in order[held:] for seq in items[i]]
    if not train:
        raise DataError("no training conversations left after the held-out split")
    return train, held_out


@dataclass
class Batch:
    """A flat packed batch: tokens, positions, attention layout, and where the loss applies.

    `loss_rows` are the hidden rows whose next token is an assistant token; `targets` those
    next tokens (model ids).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    loss_rows: torch.Tensor
    targets: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_targets(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device) -> Batch:
        meta = AttentionMetadata.for_full_sequences(self.meta.seq_lens.tolist(), device=device)
        return Batch(
            self.input_ids.to(device),
            self.positions.to(device),
            meta,
            self.loss_rows.to(device),
            self.targets.to(device),
        )


def make_batch(sequences: Sequence[TrainingSequence], token_map: torch.Tensor | None) -> Batch:
    """Pack sequences into one Batch; `token_map` maps vocabulary ids to model ids (or None)."""
    ids = torch.tensor([t for seq in sequences for t in seq.token_ids], dtype=torch.long)
    mask = torch.tensor([m for seq in sequences for m in seq.assistant_mask], dtype=torch.bool)
    lengths = [len(seq.token_ids) for seq in sequences]
    positions = torch.cat([torch.arange(n) for n in lengths])
    if token_map is not None:
        ids = token_map[ids]
    # hidden row r predicts token r + 1 of the same sequence: a sequence's first token is
    # always prompt, so shifting the mask never crosses into the previous sequence
    next_is_assistant = torch.zeros_like(mask)
    next_is_assistant[:-1] = mask[1:]
    loss_rows = torch.nonzero(next_is_assistant).squeeze(1)
    return Batch(
        ids, positions, AttentionMetadata.for_full_sequences(lengths), loss_rows, ids[loss_rows + 1]
    )


def pack(
    sequences: Sequence[TrainingSequence], max_batch_tokens: int, rng: random.Random | None
) -> list[list[TrainingSequence]]:
    """Group sequences into batches of at most max_batch_tokens (a longer one goes alone).

    With `rng` the order is shuffled first (training); without, it is kept (evaluation).
    """
    order = list(range(len(sequences)))
    if rng is not None:
        rng.shuffle(order)
    groups: list[list[TrainingSequence]] = []
    current: list[TrainingSequence] = []
    tokens = 0
    for index in order:
        length = len(sequences[index].token_ids)
        if current and tokens + length > max_batch_tokens:
            groups.append(current)
            current, tokens = [], 0
        current.append(sequences[index])
        tokens += length
    if current:
        groups.append(current)
    return groups


def drop_long(
    sequences: Sequence[TrainingSequence], max_seq_len: int
) -> tuple[list[TrainingSequence], int]:
    """(sequences that fit, how many were dropped): a cut prompt would teach a broken format."""
    kept = [seq for seq in sequences if len(seq.token_ids) <= max_seq_len]
    return kept, len(sequences) - len(kept)
