"""A small TCP proxy that sits between the app and a Redis a test started, and misbehaves on cue.

Modes, switchable at run time from any thread (:meth:`FaultProxy.set_mode`):

- ``pass``: bytes flow both ways untouched;
- ``delay``: every chunk, either way, is held ``delay_ms`` before it is forwarded (order kept);
- ``drop``: new connections are accepted and then never answered; what is sent on open
  connections is swallowed (a black hole: the client's only way out is its own timeout);
- ``refuse``: nothing listens on the port any more (``ECONNREFUSED``) and open connections
  are reset;
- ``stall``: the proxy stops reading from clients (a server too busy to take requests): their
  writes fill the socket buffers and then wait. Bytes already read are forwarded when the mode
  ends.

Leaving ``drop`` or ``refuse`` closes the connections that lived through it: bytes swallowed
mid-command would otherwise desynchronise the protocol, and a real client has timed out on
them anyway. The proxy runs its own event loop in a daemon thread, so it keeps working while
the test's loop (or a server under test) is busy, and it serves clients in other processes.

    with FaultProxy(redis.port) as proxy:
        app = Middleware(inner, storage=proxy.url)
        proxy.set_mode("delay", delay_ms=500)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Literal

from tests.support import free_port

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "delay", "drop", "refuse", "stall"]
_MODES = ("pass", "delay", "drop", "refuse", "stall")


class _Pipe:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: Any) -> None:
        self.proxy = proxy
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        self.faulted = False  # lived through drop/refuse: closed when the fault ends

    async def run(self) -> None:
        proxy = self.proxy
        try:
            if proxy.mode == "drop":
                self.faulted = True
                await self._swallow(self.client_reader)
                return
            up_reader, self.upstream_writer = await asyncio.open_connection(
                proxy.target_host, proxy.target_port
            )
        except OSError:
            self.close()
            return
        self.tasks = [
            asyncio.ensure_future(self._pump(self.client_reader, self.upstream_writer)),
            asyncio.ensure_future(self._pump(up_reader, self.client_writer)),
        ]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def _pump(self, reader: asyncio.StreamReader, writer: Any) -> None:
        proxy = self.proxy
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                while proxy.mode == "stall" and reader is self.client_reader:
                    await asyncio.sleep(0.01)
                data = await reader.read(65536)
                if not data:
                    return
                mode = proxy.mode
                if mode == "drop":
                    self.faulted = True
                    continue
                if mode == "delay":
                    await asyncio.sleep(proxy.delay_ms / 1000)
                if self.faulted:
                    return
                writer.write(data)
                await writer.drain()
                proxy.forwarded += len(data)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                with contextlib.suppress(Exception):
                    transport = writer.transport
                    if self.faulted and hasattr(transport, "abort"):
                        transport.abort()
                    else:
                        writer.close()
        self.proxy.pipes.discard(self)


class FaultProxy:
    """``127.0.0.1:<port>`` → ``target``, with the modes above; a context manager."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = free_port()
        self.mode: Mode = "pass"
        self.delay_ms = 0.0
        self.accepted = 0
        self.forwarded = 0
        self.pipes: set[_Pipe] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- control (thread-safe) -------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def set_mode(self, mode: Mode, delay_ms: float = 0.0) -> None:
        """Switch to ``mode`` now (``delay_ms`` for ``delay``); returns when it is in force."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self._call(self._switch(mode, float(delay_ms)))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- on the proxy's loop ---------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _switch(self, mode: Mode, delay_ms: float) -> None:
        previous, self.mode, self.delay_ms = self.mode, mode, delay_ms
        if mode == "refuse":
            await self._unlisten()
            for pipe in list(self.pipes):
                pipe.faulted = True
                pipe.close()
        elif previous == "refuse":
            await self._listen()
        if mode in ("pass", "delay"):
            for pipe in list(self.pipes):
                if pipe.faulted:
                    pipe.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.accepted += 1
        pipe = _Pipe(self, reader, writer)
        self.pipes.add(pipe)
        await pipe.run()

    async def _shutdown(self) -> None:
        await self._unlisten()
        for pipe in list(self.pipes):
            pipe.close()
