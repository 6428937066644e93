"""Exceptions raised by tinylmz. Each carries a one-line message meant for users."""


class TinylmzError(Exception):
    """Base class: every error tinylmz raises on purpose."""


class FormatError(TinylmzError):
    """The input is not a valid .tlmz file (bad magic, damaged, truncated, unknown version)."""


class ModelError(TinylmzError):
    """A model is missing, damaged, or not the one a file was made with."""


class EngineMismatch(TinylmzError):
    """A file needs an engine (version, fingerprint) this process cannot reproduce."""
