"""Harmony for gpt-oss: render OpenAI requests to token ids, parse generated ids back.

The router renders (replicas only see tokens) and parses the model's output into
reasoning / content / tool-call deltas. Torch-free.
"""

from oss_serve.router.harmony.errors import HarmonyRequestError
from oss_serve.router.harmony.render import render_chat_request, render_responses_request

__all__ = [
    "HarmonyRequestError",
    "render_chat_request",
    "render_responses_request",
]
