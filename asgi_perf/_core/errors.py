"""The error every bad option or environment value raises, and the hint for a missing extra."""

from __future__ import annotations

__all__ = ["ConfigError", "install_hint"]


class ConfigError(ValueError):
    """A bad option or environment value, named, with what is accepted.

    ``middleware`` is the class whose option it is (set for every error raised while a
    middleware is built); ``name`` is the keyword option, or the environment variable when
    the value came from the environment.
    """

    __module__ = "asgi_perf"  # where users import it from: tracebacks say asgi_perf.ConfigError

    def __init__(
        self, name: str, value: object, accepted: str, middleware: str | None = None
    ) -> None:
        self.name = name
        self.value = value
        self.accepted = accepted
        self.middleware = middleware
        where = f"{middleware}: " if middleware else ""
        super().__init__(f"{where}{name}={value!r} is not valid: expected {accepted}")

    def located(self, middleware: str, variable: tuple[str, object] | None = None) -> ConfigError:
        """The same error, said of ``middleware`` (and of ``variable``'s name and raw value)."""
        name, value = variable if variable is not None else (self.name, self.value)
        return ConfigError(name, value, self.accepted, self.middleware or middleware)


def install_hint(extra: str) -> str:
    """What to run for a missing optional dependency: ``pip install 'asgi-perf[extra]'``."""
    return f"pip install 'asgi-perf[{extra}]'"
