"""Serving many requests at once: the continuous-batching scheduler."""
