"""reasondistill: distill reasoning from a teacher LLM into a smaller student."""

__version__ = "0.1.0"
