"""Input that would make the broker close the whole connection is refused at the call (issue 12, items 6-8).

Each refused input: the call raises ValueError (exactly), nothing is sent (FrameRecorder), and the
connection still works.  Measured against RabbitMQ 3.10 without the checks: a non-finite float in a
table -> 541 INTERNAL_ERROR and a properties block over the frame size -> 501 FRAME_ERROR, both
connection errors.
"""

from __future__ import annotations

import pytest

import puka
from puka import spec
from puka.tracing import FrameRecorder

URL = "amqp://127.0.0.1/"


@pytest.fixture
def client():
    recorder = FrameRecorder()
    c = puka.Client(URL, middleware=[recorder], recovery=False)
    c.wait(c.connect(), timeout=10)
    c.recorder = recorder
    yield c
    c.close()


def _refused(client, call, match):
    """``call()`` raises ValueError (exactly), sends nothing, and the connection works afterwards."""
    before = len(client.recorder.frames)
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert type(info.value) is ValueError
    q = client.wait(client.queue_declare(exclusive=True), timeout=10)
    sent = [f.name for f in client.recorder.frames[before:] if f.direction == "out"]
    # only the queue.declare made here (and the channel it may open) went out
    assert [name for name in sent if name != "channel.open"] == ["queue.declare"], sent
    client.wait(client.basic_publish("", q["queue"], b"ok"), timeout=10)
    return info.value


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_float_in_headers_is_refused(client, value):
    _refused(client, lambda: client.basic_publish("", "q", b"x", headers={"x": value}), "not finite")


@pytest.mark.parametrize(
    "headers",
    [{"x": [1, float("nan")]}, {"x": {"y": {"z": float("inf")}}}, {"x": [{"y": (1, float("-inf"))}]}],
    ids=["array", "nested-table", "table-in-array"],
)
def test_non_finite_float_nested_is_refused(client, headers):
    _refused(client, lambda: client.basic_publish("", "q", b"x", headers=headers), "not finite")


def test_non_finite_float_in_arguments_is_refused(client):
    _refused(client, lambda: client.queue_declare(arguments={"x-foo": float("inf")}), "not finite")


def test_finite_floats_still_encode():
    assert spec.decode_table(spec.encode_table({"x": 1e308, "y": -0.0}))[0] == {"x": 1e308, "y": -0.0}


def test_headers_larger_than_the_frame_size_are_refused(client):
    limit = client.frame_max
    error = _refused(client, lambda: client.basic_publish("", "q", b"x", headers={"x": "a" * limit}), "frame size")
    assert "%d bytes" % limit in str(error)  # the limit
    assert "take %d bytes" % (limit + 2 + 4 + 2 + 5) in str(error)  # the size


def test_headers_that_just_fit_the_frame_size_are_sent(client):
    q = client.wait(client.queue_declare(exclusive=True), timeout=10)["queue"]
    # properties: flags (2) + headers table length (4) + key "x" (2) + tag and length (5) + value; overhead 20
    value = "a" * (client.frame_max - 20 - 2 - 4 - 2 - 5)
    client.wait(client.basic_publish("", q, b"x", headers={"x": value}), timeout=10)
    with pytest.raises(ValueError, match="frame size"):
        client.basic_publish("", q, b"x", headers={"x": value + "a"})
    m = client.wait(client.basic_get(q, no_ack=True), timeout=10)
    assert m["headers"]["x"] == value


@pytest.mark.parametrize("name", ["content_type", "message_id", "correlation_id", "reply_to", "app_id", "type_"])
def test_long_short_string_properties_are_refused(client, name):
    _refused(client, lambda: client.basic_publish("", "q", b"x", headers={name: "a" * 256}), "255 bytes")


def test_long_names_are_refused(client):
    long = "a" * 256
    _refused(client, lambda: client.basic_publish(long, "q", b"x"), "255 bytes")
    _refused(client, lambda: client.basic_publish("", long, b"x"), "255 bytes")
    _refused(client, lambda: client.queue_declare(long), "255 bytes")
    _refused(client, lambda: client.exchange_declare(long), "255 bytes")
    _refused(client, lambda: client.basic_consume("q", consumer_tag=long), "255 bytes")


@pytest.mark.parametrize("value", ["1.5", "-1", "", "abc", 100])
def test_bad_expiration_is_refused(client, value):
    _refused(client, lambda: client.basic_publish("", "q", b"x", headers={"expiration": value}), "expiration")


@pytest.mark.parametrize("value", [0, 3])
def test_bad_delivery_mode_is_refused(client, value):
    _refused(client, lambda: client.basic_publish("", "q", b"x", headers={"delivery_mode": value}), "delivery_mode")


@pytest.mark.parametrize("value", [-1, 256])
def test_priority_out_of_range_is_refused(client, value):
    _refused(client, lambda: client.basic_publish("", "q", b"x", headers={"priority": value}), "priority")


def test_priority_255_and_deep_tables_reach_the_broker(client):
    # Measured: RabbitMQ 3.10 takes priority 255 and tables nested 200 deep (tables and arrays).
    q = client.wait(client.queue_declare(exclusive=True), timeout=10)["queue"]
    deep: object = 1
    for _ in range(200):
        deep = {"a": [deep]}
    client.wait(client.basic_publish("", q, b"x", headers={"priority": 255, "deep": deep}), timeout=10)
    m = client.wait(client.basic_get(q, no_ack=True), timeout=10)
    assert m["headers"]["priority"] == 255


def test_tables_nested_beyond_python_recursion_raise_before_sending(client):
    # puka's encoder recurses: past Python's recursion limit (about 490 levels) it raises
    # RecursionError at the call, nothing sent.  RabbitMQ 3.10 took every depth puka can encode.
    deep: object = 1
    for _ in range(5000):
        deep = {"a": deep}
    before = len(client.recorder.frames)
    with pytest.raises(RecursionError):
        client.basic_publish("", "q", b"x", headers={"deep": deep})
    client.wait(client.queue_declare(exclusive=True), timeout=10)
    sent = [f.name for f in client.recorder.frames[before:] if f.direction == "out"]
    assert "basic.publish" not in sent


def test_an_arguments_table_larger_than_a_frame_is_refused_at_the_call(amqp_url, name):
    recorder = FrameRecorder()
    client = puka.Client(amqp_url, middleware=[recorder])
    client.wait(client.connect())
    try:
        sent = len(recorder.frames)
        with pytest.raises(ValueError, match="more than a frame"):
            client.queue_declare(queue=name, arguments={"x-big": "a" * 200_000})
        assert [f.name for f in recorder.frames[sent:] if f.direction == "out"] == []
        declared = client.wait(client.queue_declare(queue=name, exclusive=True))  # the connection lives on
        assert declared["queue"] == name
    finally:
        client.wait(client.close())
