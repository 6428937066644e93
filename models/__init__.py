"""Loads known-model registry data; see registry.toml."""
