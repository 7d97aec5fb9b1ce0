"""connection.blocked / unblocked from a real memory alarm."""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile

import pytest
from seam import install_client_clock

import puka

#: The watermark that trips the alarm, as rabbitmqctl takes it and as the broker reports it.
ALARM, ALARM_TERM = "0.0000001", "1.0e-7"
#: Test runs on this machine take turns with the alarm: a run that read the watermark while another
#: had tripped it would "restore" the alarm for good.
LOCK = os.path.join(tempfile.gettempdir(), "puka-tests-memory-alarm.lock")


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def watermark() -> str:
    """The broker's memory high watermark, as an Erlang term (``0.4``, ``{absolute,1073741824}``)."""
    return rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")


class MemoryAlarm:
    """Trips the broker's memory alarm (a tiny watermark) and clears it (the watermark it had before)."""

    def __init__(self) -> None:
        self.previous = watermark()
        self.tripped = False

    def trip(self) -> None:
        self.tripped = True
        rabbitmqctl("set_vm_memory_high_watermark", ALARM)

    def clear(self) -> None:
        if self.tripped:
            rabbitmqctl("eval", "ok = vm_memory_monitor:set_vm_memory_high_watermark(%s)." % self.previous)
            self.tripped = False


@pytest.fixture
def memory_alarm():
    """A MemoryAlarm; the broker gets its previous watermark back, whatever happens."""
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        alarm = MemoryAlarm()
        assert alarm.previous != ALARM_TERM, (
            "the broker's memory alarm is already tripped (an interrupted run?): "
            "restore its watermark first, e.g. rabbitmqctl set_vm_memory_high_watermark 0.4"
        )
        try:
            yield alarm
        finally:
            alarm.clear()
            assert watermark() == alarm.previous


def wait_until_blocked(client: puka.Client, events: list) -> None:
    """Run the client's event loop until the broker blocks it (loop() ends at the on_blocked call)."""

    def on_blocked(reason):
        events.append(reason)
        client.loop_break()

    client.on_blocked = on_blocked
    client.loop(timeout=30)
    assert client.blocked is not None, "the broker did not block the connection"


def test_blocked_is_reported_and_publishes_complete_after_unblock(amqp_url, memory_alarm, name):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    events = []
    queue = client.wait(client.queue_declare(queue=name, auto_delete=True))["queue"]
    consume = client.basic_consume(queue=queue, no_ack=True)  # keeps the auto-delete queue alive
    try:
        memory_alarm.trip()
        first = client.basic_publish(exchange="", routing_key=queue, body=b"while blocked")
        wait_until_blocked(client, events)
        assert events == [client.blocked]
        later = [client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(100)]
        assert client.wait(later[-1], timeout=1.0) is None  # held back while blocked
        memory_alarm.clear()
        assert client.wait(first, timeout=30) == {}
        # The broker unblocked the connection before it read (and confirmed) what was held back.
        assert client.blocked is None
        assert events == [events[0], None]
        assert all(r == {} for r in client.wait_for_all(later))
        received = [client.wait(consume, timeout=10)["body"] for _ in range(101)]
        assert received[0] == b"while blocked" and received[1:] == [b"%d" % i for i in range(100)]
    finally:
        memory_alarm.clear()
        client.wait(client.close(), timeout=10)  # (a no-op on a broken client)


def test_close_while_blocked_returns_at_the_close_timeout(amqp_url, memory_alarm, name, monkeypatch):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    queue = client.wait(client.queue_declare(queue=name, auto_delete=True))["queue"]
    memory_alarm.trip()
    pending = client.basic_publish(exchange="", routing_key=queue, body=b"x")
    wait_until_blocked(client, [])
    # From here the client's clock is fake: the close deadline is checked against the rule.
    clock = install_client_clock(monkeypatch)
    close = client.close()
    client.on_write()  # connection.close goes out; the blocked broker does not read it
    clock.advance(puka.client.CLOSE_TIMEOUT - 0.01)
    assert client.on_timer() == pytest.approx(0.01, abs=1e-6)  # the close deadline is the next timer
    assert client.wait(close, timeout=0) is None
    assert client.wait(pending, timeout=0) is None
    clock.advance(0.02)
    client.on_timer()
    assert client.wait(close, timeout=0) == {}  # closed all the same, without the broker's close-ok
    result = client.wait(pending, raise_errors=False, timeout=0)
    assert type(result.exception) is puka.ConnectionBroken
    assert str(result.exception) == "the broker did not answer connection.close"
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue="after")
