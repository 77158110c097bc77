"""Chaos soak: the chaos test's sweep and monkey, for as long as you like (python -m benchmarks.chaos)."""
