"""REST: real-time streaming talking-head generation (arXiv 2512.11229)."""

__version__ = "0.1.0"
