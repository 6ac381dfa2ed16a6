"""Running the app under uvicorn: the socket bound first (a port in use is one line), SIGTERM drained, exit 0."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

from starlette.types import ASGIApp

from ..errors import ZooError

GRACE_SECONDS = 30  # how long requests in flight may take to finish once asked to stop


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host``:``port`` (0: a free port), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ZooError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --host or --port"
        ) from None
    return sock


def run(app: ASGIApp, sock: socket.socket, on_ready: Callable[[], None]) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or Ctrl-C, which stop new connections and let the requests in
    flight finish (up to GRACE_SECONDS). After SIGTERM this returns; after Ctrl-C, KeyboardInterrupt."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_ready()

    # log_config=None: uvicorn's loggers get no handlers of their own and reach zoo's: their INFO lines with
    # --verbose only, a request's internal bug (ERROR, with its traceback) always (cli/group.py SHOWN_ALWAYS).
    server = Server(uvicorn.Config(app, timeout_graceful_shutdown=GRACE_SECONDS, lifespan="on", log_config=None))
    # uvicorn raises the signal it stopped on again once it has shut down: SIGTERM's default action
    # would then end the process by the signal. It reaches this handler instead, and `zoo serve` exits 0.
    address = sock.getsockname()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise ZooError(
            f"the server on {address[0]}:{address[1]} did not start: zoo --verbose serve ... shows uvicorn's log of why"
        )
