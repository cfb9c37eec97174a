"""What the loopback services of ``tests/support`` share: a free port, and start/stop as ``with``.

One copy here, so that the collectors, the fake servers and the stack's programs pick ports
and run as context managers the same way.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self

__all__ = ["StartStop", "free_port"]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (callers retry if it is taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StartStop:
    """``with service as s:`` is ``s = service.start()`` and, however the block ends,
    ``service.stop()``; subclasses define the two."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
