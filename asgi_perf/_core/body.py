"""Read a request body once, up to a limit, and hand it on to the app unchanged.

A middleware that must see the body before the app does (to fingerprint it) reads the
``http.request`` messages itself; :meth:`BufferedBody.receive` then gives the app the very
same messages (chunking, ``more_body`` and any ``http.disconnect`` included) and, after them,
whatever the server still has. Reading stops as soon as the body exceeds the limit, so at most
``limit`` bytes plus the one message that crossed it are held; the rest streams to the app
as the client sends it. When the first message holds the whole body (most requests),
:func:`prepend` hands it over more cheaply than a :class:`BufferedBody`.
"""

from __future__ import annotations

from asgi_perf._core.asgi import Message, Receive

__all__ = ["BufferedBody", "prepend", "read_body"]


class BufferedBody:
    """What :func:`read_body` read. ``complete``: the whole body is here, within the limit."""

    __slots__ = ("_index", "_receive", "complete", "messages", "size")

    def __init__(self, receive: Receive, messages: list[Message], size: int, complete: bool):
        self._receive = receive
        self._index = 0
        self.messages = messages
        self.size = size
        self.complete = complete

    @property
    def data(self) -> bytes:
        """The bytes read so far (all of the body when :attr:`complete`)."""
        if len(self.messages) == 1:
            return bytes(self.messages[0].get("body", b""))
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.request")

    @property
    def disconnected(self) -> bool:
        """The client went away before its body was complete."""
        return bool(self.messages[-1]["type"] != "http.request")

    async def receive(self) -> Message:
        """The messages read, in order, then the server's own ``receive``."""
        index = self._index
        if index < len(self.messages):
            self._index = index + 1
            return self.messages[index]
        return await self._receive()


def prepend(message: Message, receive: Receive) -> Receive:
    """``receive`` that first returns ``message`` (already received), then reads on: the
    cheapest hand-over when that one message held the whole body."""
    pending: Message | None = message

    async def receive_again() -> Message:
        nonlocal pending
        if pending is not None:
            first, pending = pending, None
            return first
        return await receive()

    return receive_again


async def read_body(receive: Receive, limit: int, first: Message | None = None) -> BufferedBody:
    """Read until the body ends, exceeds ``limit`` bytes, or the client disconnects
    (``first``: a message already received, the first of the body)."""
    messages: list[Message] = []
    size = 0
    while True:
        if first is None:
            message = await receive()
        else:
            message, first = first, None
        messages.append(message)
        if message["type"] != "http.request":
            return BufferedBody(receive, messages, size, False)
        size += len(message.get("body", b""))
        if size > limit:
            return BufferedBody(receive, messages, size, False)
        if not message.get("more_body", False):
            return BufferedBody(receive, messages, size, True)
