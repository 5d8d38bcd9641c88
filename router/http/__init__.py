"""The OpenAI-compatible HTTP API (FastAPI), a front end of the shared request pipeline."""
