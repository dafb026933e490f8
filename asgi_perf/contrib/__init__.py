"""Framework-specific conveniences (imported only by users of that framework)."""

__all__: list[str] = []
