"""The core: ASGI helpers, options, request context, identity, route templates, recording,
HTTP semantics.

It knows no store and no middleware."""

__all__: list[str] = []
