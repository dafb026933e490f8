"""One request as Timing sees it: the context inner layers report into and the wrappers of
``send`` and ``receive`` (its cost is most of Timing's own)."""

from __future__ import annotations

from collections.abc import Callable

from asgi_perf._core.asgi import Message, Receive, Scope, Send
from asgi_perf._core.context import RequestContext, format_server_timing

__all__ = ["Exchange", "ExchangeSettings"]


class ExchangeSettings:
    """What an exchange reads of its middleware's settings (fixed at construction)."""

    __slots__ = ("adds_headers", "clock", "expose", "response_time_header")

    def __init__(
        self,
        clock: Callable[[], float],
        response_time_header: bytes | None,
        expose: Callable[[Scope], bool] | bool,
    ) -> None:
        self.clock = clock
        self.response_time_header = response_time_header
        self.expose = expose
        self.adds_headers = expose is not False or response_time_header is not None


class Exchange(RequestContext):
    """One request: the context inner layers write into, and the ``send``/``receive`` wrappers.

    One object instead of a context plus closures: a request allocates it and two bound
    methods. Every slot is set by :meth:`TimingMiddleware.__call__`; what it needs of the
    middleware's settings is :class:`ExchangeSettings`, never the middleware.
    """

    __slots__ = (
        "disconnected",
        "end",
        "receive_next",
        "scope",
        "send_next",
        "settings",
        "start",
        "status",
        "ttfb",
    )

    settings: ExchangeSettings
    scope: Scope
    send_next: Send
    receive_next: Receive
    start: float
    status: int  # 0 until the response starts
    disconnected: bool
    ttfb: float | None
    end: float | None

    async def receive(self) -> Message:
        message = await self.receive_next()
        if message["type"] == "http.disconnect" and not self.status:
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if "more_body" in message and message["more_body"]:
                if self.ttfb is None:
                    self.ttfb = self.settings.clock() - self.start
                await self.send_next(message)
                return
            await self.send_next(message)
            if self.end is None:
                self.end = self.settings.clock()
            return
        if kind == "http.response.start":
            self.status = message["status"]
            mw = self.settings
            added: tuple[tuple[bytes, bytes], ...] = ()
            if mw.adds_headers:
                # Server-Timing and X-Response-Time, inline: this is most of Timing's own cost.
                ms = b"%.3f" % ((mw.clock() - self.start) * 1000.0)
                name = mw.response_time_header
                expose = mw.expose
                if expose is True or (expose is not False and expose(self.scope)):
                    # 48 is b"0": strip trailing zeros (and a bare point) by slicing, no call
                    dur = (
                        ms
                        if ms[-1] != 48
                        else ms[:-1]
                        if ms[-2] != 48
                        else ms[:-2]
                        if ms[-3] != 48
                        else ms[:-4]
                    )
                    value = b"total;dur=" + dur
                    timings = self._timings
                    late = self.late
                    if late is not None:  # the innermost layer's entry (RequestContext)
                        timings = [late(), *timings] if timings else [late()]
                    if timings:
                        value += b", " + format_server_timing(timings)
                    if name is not None:
                        added = ((b"server-timing", value), (name, ms + b"ms"))
                    else:
                        added = ((b"server-timing", value),)
                elif name is not None:
                    added = ((name, ms + b"ms"),)
            # One new header list (the app's, which a recorder inside may hold, is left
            # alone), with the fields the layer right inside handed over (RequestContext).
            handed = self.fields
            if handed is not None or added:
                headers = message["headers"] if "headers" in message else ()
                message["headers"] = (
                    [*headers, *added] if handed is None else [*headers, *handed, *added]
                )
        elif kind == "http.response.pathsend":  # the file is the whole body
            await self.send_next(message)
            if self.end is None:
                self.end = self.settings.clock()
            return
        await self.send_next(message)
