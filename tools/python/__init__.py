"""gpt-oss's built-in `python` tool: stateful interpreters, one per session, each in its own
sandbox (bubblewrap: no network, read-only host, a private tmpfs, rlimits)."""
