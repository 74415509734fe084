"""`--port-file`: tell whoever started a server (on port 0, say) which port it listens on.

The file is written once the socket listens, atomically (a temporary file renamed into place), so a
reader that finds it always reads a whole port number.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path


def bound_port(sockets: Iterable[socket.socket]) -> int:
    """The port of the first listening TCP socket."""
    for sock in sockets:
        address = sock.getsockname()
        if isinstance(address, tuple):
            return int(address[1])
    raise ValueError("no TCP socket is listening")


def write_port_file(path: str | os.PathLike[str], port: int) -> None:
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n")
    os.replace(temporary, target)
