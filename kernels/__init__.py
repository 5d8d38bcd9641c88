"""Triton kernels with pure-torch references beside them. Imports nothing of the project."""
