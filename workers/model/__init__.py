"""gpt-oss itself: config, forward pass, weights in and out, and how ranks slice it."""
