"""`rest serve`: the live web demo and WebSocket API (rest/serve/app.py)."""

from rest.serve.app import ServeOptions, create_app

__all__ = ["ServeOptions", "create_app"]
