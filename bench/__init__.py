"""Benchmarks: scripts that print figures beside their limits (not tests)."""
