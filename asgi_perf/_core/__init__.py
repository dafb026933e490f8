"""The core: ASGI helpers, options, request context, identity, recording.

It knows no store and no middleware."""

__all__: list[str] = []
