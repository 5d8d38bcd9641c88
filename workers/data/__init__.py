"""Bundled training data: the synthetic corpus the embedded demo model learns from."""
