"""Server-side tools the router runs for the model: gpt-oss's built-in `python` and `browser`,
and the tools of MCP servers. Each executor turns one harmony tool call into the tool
message the model reads next."""
