"""Errors shared by every layer (a leaf module, so anything may import it)."""


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says which and what is valid."""
