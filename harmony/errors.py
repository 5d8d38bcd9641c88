"""The one error type harmony raises for bad requests; the API maps it to HTTP 400."""

from __future__ import annotations


class HarmonyRequestError(ValueError):
    """A request that cannot be rendered to harmony, with the offending field named.

    `field` is a JSON-path-like location in the request body (e.g. `messages[2].content`),
    so the HTTP layer can return OpenAI's `{"error": {"param": field, ...}}` shape.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
