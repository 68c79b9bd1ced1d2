"""Helpers for tests, benches and the command line's --tiny mode (not used by the nodes)."""
