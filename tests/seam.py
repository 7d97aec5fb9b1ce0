"""The test seam: the one place where tests touch puka's internals.

Everything else in ``tests/`` goes through the public API (``puka.Client``,
``puka.spec``, ``puka.framing``, ``puka.tracing``), the fault proxy and the
scripted fake server.  A few tests need more than that:

* a controllable clock for the transport's timers (heartbeats, deadlines), so
  that a rule such as "the peer is dead after two silent heartbeat intervals"
  is checked against the rule, not against the wall clock;
* a sans-IO protocol core fed scripted frames (the fuzz and memory tests).

Those reach in here and only here: when the core's modules move, this file
changes and the tests that use it do not.
"""

from __future__ import annotations

import time as _real_time
import types

import puka.connection as _transport_module


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = _real_time.monotonic() if start is None else start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def install_transport_clock(monkeypatch) -> FakeClock:
    """Make the transport (socket, heartbeats, deadlines) read a FakeClock.

    Only the transport's module sees the fake time: the fake server, the proxy
    and pytest keep the real clock.
    """
    clock = FakeClock()
    shim = types.SimpleNamespace(**{name: getattr(_real_time, name) for name in dir(_real_time) if not name.startswith("__")})
    shim.monotonic = clock.monotonic
    monkeypatch.setattr(_transport_module, "time", shim)
    return clock


def install_client_clock(monkeypatch) -> FakeClock:
    """Like :func:`install_transport_clock`, and ``Client.on_timer()`` reads the same FakeClock.

    ``on_timer()`` takes the time it hands to the transport's timers in the
    client's module; without this it would hold the real clock against the
    fake one.  The client's own time-outs follow the fake clock too
    (``wait(timeout=...)``, ``loop(timeout=...)``, the connect and close
    deadlines): ``wait(promise, timeout=0)`` still returns at once.
    """
    import puka.client as _client_module

    clock = install_transport_clock(monkeypatch)
    monkeypatch.setattr(_client_module, "time", _transport_module.time)
    return clock
