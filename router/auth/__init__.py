"""API keys (hashed in Redis), per-key rate limits shared by every router, usage accounting."""
