"""No network in the tests: every socket connection to anything but loopback is refused and recorded.

Two users, one implementation:
- the test process: tests/conftest.py calls install() for the session and fails any test that made a refused
  attempt (a refused attempt the code under test swallowed still fails it);
- the ComfyUI server subprocess: tests/comfy_harness.py puts this folder first on its PYTHONPATH, so Python
  imports this file as `sitecustomize` at start-up; with DIFFBODY_NETWORK_GUARD_LOG set it installs the guard
  there and appends one line per refused attempt to that file, which the harness reads.

Allowed: AF_UNIX, loopback addresses (127.0.0.0/8, ::1) and the name "localhost". Everything else (including
other host names: no DNS look-up is made to find out) raises OutboundConnectionRefused.
"""

from __future__ import annotations

import ipaddress
import os
import socket

LOG_ENV = "DIFFBODY_NETWORK_GUARD_LOG"
attempts: list[str] = []
_original = {}


class OutboundConnectionRefused(ConnectionRefusedError):
    """A test tried to reach the network."""


def is_loopback(family, address) -> bool:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # AF_UNIX and friends never leave the machine
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(sock, address) -> None:
    line = f"pid {os.getpid()}: refused a connection to {address!r}"
    attempts.append(line)
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    raise OutboundConnectionRefused(f"network guard (tests/network_guard): {line}; the tests must not use the network")


def _guarded(name):
    original = _original[name]

    def method(self, address):
        if not is_loopback(self.family, address):
            _refuse(self, address)
        return original(self, address)

    method.__name__ = name
    return method


def install() -> None:
    if _original:
        return
    for name in ("connect", "connect_ex"):
        _original[name] = getattr(socket.socket, name)
        setattr(socket.socket, name, _guarded(name))


if os.environ.get(LOG_ENV):
    install()
