"""The engine: requests, the scheduler, paged KV with prefix caching, outputs; no tensors."""
