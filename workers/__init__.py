"""The model and the engine: gpt-oss forward pass, checkpoints, paged KV, scheduler, sampler."""
