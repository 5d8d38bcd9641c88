"""Harmony for gpt-oss: render OpenAI requests to token ids, parse generated ids back.

The router renders (replicas only see tokens) and parses the model's output into
reasoning / content / tool-call deltas. Torch-free.
"""

from oss_serve.common.vocab import STOP_TOKEN_IDS
from oss_serve.harmony.errors import HarmonyRequestError
from oss_serve.harmony.events import (
    BuiltinToolCall,
    ContentDelta,
    HarmonyEvent,
    MessageEnd,
    ParsedCompletion,
    ParsedToolCall,
    ReasoningDelta,
    StopReason,
    ToolCallArgumentsDelta,
    ToolCallStart,
)
from oss_serve.harmony.parser import HarmonyStreamParser, parse_completion, stop_token_ids
from oss_serve.harmony.render import render_chat_request, render_responses_request

__all__ = [
    "STOP_TOKEN_IDS",
    "BuiltinToolCall",
    "ContentDelta",
    "HarmonyEvent",
    "HarmonyRequestError",
    "HarmonyStreamParser",
    "MessageEnd",
    "ParsedCompletion",
    "ParsedToolCall",
    "ReasoningDelta",
    "StopReason",
    "ToolCallArgumentsDelta",
    "ToolCallStart",
    "parse_completion",
    "render_chat_request",
    "render_responses_request",
    "stop_token_ids",
]
