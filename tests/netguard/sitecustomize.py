"""Loaded into server processes under test (via PYTHONPATH): refuses and records any connection
or name lookup that leaves the machine, so a test can prove the server stayed offline."""

import ipaddress
import os
import socket

_LOG = os.environ.get("TANDEM_NETGUARD_LOG")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(what + "\n")


def _is_local(host: object) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not _is_local(address[0]):
        _record(f"connect {address!r}")
        raise OSError(f"netguard: connection to {address!r} refused in tests")


def connect(self, address):  # type: ignore[no-untyped-def]
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):  # type: ignore[no-untyped-def]
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if not _is_local(host if not isinstance(host, bytes) else host.decode()):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror(f"netguard: lookup of {host!r} refused in tests")
    return _getaddrinfo(host, *args, **kwargs)


if _LOG:
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo  # type: ignore[method-assign]
