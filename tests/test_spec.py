"""puka.spec: the AMQP 0-9-1 model, its codecs, field tables, properties and errors.

Wire formats are checked three ways: against the AMQP 0-9-1 specification
(hand-built bytes), against pamqp (an independent implementation, byte for
byte), and against themselves (encode -> decode identity, with Hypothesis).
"""

from __future__ import annotations

import datetime
import pickle
import struct
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pamqp import commands, header
from pamqp import encode as pamqp_encode

import puka
import puka.exceptions
from puka import spec
from puka.spec import DecodeError, codecs

UTC = datetime.timezone.utc
FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

BASIC = spec.CLASS_IDS["basic"]
BASIC_PROPS = spec.PROPERTIES[BASIC]
PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type_",
    "user_id",
    "app_id",
    "cluster_id",
)
WIRE_TYPES = {"bit", "octet", "short", "long", "longlong", "shortstr", "longstr", "timestamp", "table"}

#: A non-default value per wire type (near the top of each unsigned range).
SAMPLE = {
    "octet": 200,
    "short": 65000,
    "long": 4_000_000_000,
    "longlong": 2**63 + 5,
    "timestamp": 1_700_000_000,
    "shortstr": "x-é",
    "longstr": "a long string \x00 with ✓ and a NUL",
    "table": {"a": 1},
}
DEFAULTS = {
    "bit": False,
    "octet": 0,
    "short": 0,
    "long": 0,
    "longlong": 0,
    "timestamp": 0,
    "shortstr": "",
    "longstr": "",
    "table": {},
}
METHOD_CLASSES = sorted(spec.METHODS.values(), key=lambda cls: cls.method_id)
METHOD_IDS = [cls.name for cls in METHOD_CLASSES]


def by_name(name):
    return spec.METHODS_BY_NAME[name]


def sample_values(cls, bits):
    """Non-default values for every settable field; ``bits(i)`` gives the i-th bit field's value."""
    values = {}
    n_bits = 0
    for field in cls.fields:
        if field.reserved:
            continue
        if field.type == "bit":
            values[field.name] = bits(n_bits)
            n_bits += 1
        else:
            values[field.name] = SAMPLE[field.type]
    return values


def sorted_keys(value):
    """The same value with every dict's keys in sorted order (pamqp sorts table keys)."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def assert_identical(actual, expected, path="value"):
    """Equal, and of the same types all the way down (True is not 1, 1.0 is not 1)."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, list), "%s: %r is not a list" % (path, actual)
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, "%s[%d]" % (path, i))
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), "%s: %r is not a dict" % (path, actual)
        assert set(actual) == set(expected), path
        for key in expected:
            assert_identical(actual[key], expected[key], "%s[%r]" % (path, key))
        return
    if isinstance(expected, (bytearray, memoryview)):
        expected = bytes(expected)
    assert type(actual) is type(expected), "%s: %r is a %s, expected %s" % (
        path,
        actual,
        type(actual).__name__,
        type(expected).__name__,
    )
    if isinstance(expected, float):
        assert struct.pack(">d", actual) == struct.pack(">d", expected), path
    else:
        assert actual == expected, path


# --- every method of the model round-trips ------------------------------------------------------

BIT_PATTERNS = {
    "all-set": lambda i: True,
    "even-set": lambda i: i % 2 == 0,
    "odd-set": lambda i: i % 2 == 1,
}


@pytest.mark.parametrize("pattern", sorted(BIT_PATTERNS))
@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=METHOD_IDS)
def test_every_method_round_trips_its_fields(cls, pattern):
    values = sample_values(cls, BIT_PATTERNS[pattern])
    payload = cls.encode(**values)
    assert payload[:4] == struct.pack(">HH", cls.class_id, cls.index)

    decoded, end = spec.decode_method(payload, 0)
    assert type(decoded) is cls
    assert_identical(decoded, values)
    assert end == len(payload)

    # The same payload further into a buffer: the offset is honoured.
    decoded, end = spec.decode_method(b"junk" + payload + b"more", 4)
    assert decoded == values
    assert end == 4 + len(payload)


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=METHOD_IDS)
def test_positional_encoding_matches_keyword_encoding(cls):
    values = sample_values(cls, BIT_PATTERNS["even-set"])
    assert cls.encode_args(*values.values()) == cls.encode(**values)
    with pytest.raises(TypeError):
        cls.encode_args(*values.values(), "one too many")


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=METHOD_IDS)
def test_encoding_without_arguments_gives_the_defaults(cls):
    decoded, end = spec.decode_method(cls.encode(), 0)
    expected = {f.name: DEFAULTS[f.type] for f in cls.fields if not f.reserved}
    assert_identical(decoded, expected)
    assert end == len(cls.encode())


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=METHOD_IDS)
def test_unknown_and_reserved_field_names_are_rejected(cls):
    with pytest.raises(TypeError, match="no_such_field"):
        cls.encode(no_such_field=1)
    for field in cls.fields:
        if field.reserved:
            with pytest.raises(TypeError, match=field.name):
                cls.encode(**{field.name: DEFAULTS[field.type]})


def test_reserved_fields_are_read_but_not_kept():
    # connection.open: virtual-host, reserved-1 (shortstr), reserved-2 (bit).
    payload = struct.pack(">HH", 10, 40) + b"\x01/" + b"\x05caps!" + b"\x01"
    decoded, end = spec.decode_method(payload, 0)
    assert decoded == {"virtual_host": "/"}
    assert end == len(payload)


# --- public attributes and facts from the AMQP specification -----------------------------------


def test_method_keys_and_class_attributes():
    assert len(spec.METHODS) == len(METHOD_CLASSES) > 50
    for key, cls in spec.METHODS.items():
        assert key == cls.class_id << 16 | cls.index == cls.method_id
        class_name, _, method_name = cls.name.partition(".")
        assert spec.CLASS_IDS[class_name] == cls.class_id
        assert method_name and method_name == method_name.lower() and "_" not in method_name
        assert spec.METHODS_BY_NAME[cls.name] is cls
        assert isinstance(cls.synchronous, bool) and isinstance(cls.has_content, bool)
        assert isinstance(cls.fields, tuple)
        for field in cls.fields:
            assert isinstance(field, spec.Field)
            assert field.name.isidentifier(), field
            assert field.type in WIRE_TYPES
            assert isinstance(field.reserved, bool)
        for response in cls.responses:
            assert spec.METHODS_BY_NAME[response].class_id == cls.class_id


@pytest.mark.parametrize(
    "name, class_id, index, synchronous, has_content",
    [
        ("connection.start", 10, 10, True, False),
        ("connection.tune", 10, 30, True, False),
        ("connection.blocked", 10, 60, False, False),
        ("connection.unblocked", 10, 61, False, False),
        ("connection.update-secret", 10, 70, True, False),
        ("connection.update-secret-ok", 10, 71, True, False),
        ("channel.open", 20, 10, True, False),
        ("exchange.declare", 40, 10, True, False),
        ("exchange.bind", 40, 30, True, False),
        ("exchange.unbind-ok", 40, 51, True, False),
        ("queue.declare", 50, 10, True, False),
        ("queue.declare-ok", 50, 11, True, False),
        ("queue.unbind", 50, 50, True, False),
        ("basic.qos", 60, 10, True, False),
        ("basic.publish", 60, 40, False, True),
        ("basic.return", 60, 50, False, True),
        ("basic.deliver", 60, 60, False, True),
        ("basic.get-ok", 60, 71, True, True),
        ("basic.ack", 60, 80, False, False),
        ("basic.recover", 60, 110, True, False),
        ("basic.nack", 60, 120, False, False),
        ("tx.select", 90, 10, True, False),
        ("confirm.select", 85, 10, True, False),
        ("confirm.select-ok", 85, 11, True, False),
    ],
)
def test_known_methods(name, class_id, index, synchronous, has_content):
    cls = by_name(name)
    assert (cls.class_id, cls.index) == (class_id, index)
    assert spec.METHODS[class_id << 16 | index] is cls
    assert cls.synchronous is synchronous
    assert cls.has_content is has_content


def test_known_responses_and_fields():
    assert by_name("queue.declare").responses == ("queue.declare-ok",)
    assert set(by_name("basic.get").responses) == {"basic.get-ok", "basic.get-empty"}
    assert by_name("basic.publish").responses == ()
    # Overlay: basic.recover is synchronous and answered by recover-ok.
    assert by_name("basic.recover").responses == ("basic.recover-ok",)
    assert by_name("connection.update-secret").responses == ("connection.update-secret-ok",)
    assert [(f.name, f.type) for f in by_name("connection.update-secret").fields] == [
        ("new_secret", "longstr"),
        ("reason", "shortstr"),
    ]
    assert [(f.name, f.type, f.reserved) for f in by_name("basic.publish").fields] == [
        ("reserved_1", "short", True),
        ("exchange", "shortstr", False),
        ("routing_key", "shortstr", False),
        ("mandatory", "bit", False),
        ("immediate", "bit", False),
    ]
    assert [(f.name, f.type) for f in by_name("basic.nack").fields] == [
        ("delivery_tag", "longlong"),
        ("multiple", "bit"),
        ("requeue", "bit"),
    ]
    assert spec.CLASS_IDS == {
        "connection": 10,
        "channel": 20,
        "exchange": 40,
        "queue": 50,
        "basic": 60,
        "confirm": 85,
        "tx": 90,
    }
    assert (spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY, spec.FRAME_HEARTBEAT) == (1, 2, 3, 8)
    assert spec.FRAME_END == 0xCE
    assert spec.FRAME_MIN_SIZE == 4096
    assert spec.PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"


def test_unknown_method_id_is_a_decode_error():
    with pytest.raises(DecodeError, match="unknown method 60.999"):
        spec.decode_method(struct.pack(">HH", 60, 999))


# --- bit packing ---------------------------------------------------------------------------------


def test_queue_declare_packs_its_five_bits_into_one_octet_lsb_first():
    cls = by_name("queue.declare")
    names = ["passive", "durable", "exclusive", "auto_delete", "no_wait"]
    head = struct.pack(">HHH", 50, 10, 0) + b"\x01q"
    for bit, name in enumerate(names):
        assert cls.encode(queue="q", **{name: True}) == head + bytes([1 << bit]) + b"\x00\x00\x00\x00"
    assert cls.encode(queue="q", **dict.fromkeys(names, True)) == head + b"\x1f" + b"\x00\x00\x00\x00"
    decoded, _ = spec.decode_method(head + b"\x0a" + b"\x00\x00\x00\x00")
    assert decoded == {
        "queue": "q",
        "passive": False,
        "durable": True,
        "exclusive": False,
        "auto_delete": True,
        "no_wait": False,
        "arguments": {},
    }


def test_basic_nack_bits():
    cls = by_name("basic.nack")
    head = struct.pack(">HHQ", 60, 120, 9)
    assert cls.encode(delivery_tag=9, multiple=True) == head + b"\x01"
    assert cls.encode(delivery_tag=9, requeue=True) == head + b"\x02"
    assert cls.encode(delivery_tag=9, multiple=True, requeue=True) == head + b"\x03"
    assert spec.decode_method(head + b"\x02")[0] == {"delivery_tag": 9, "multiple": False, "requeue": True}


def test_exchange_declare_bits_and_the_reserved_short():
    payload = by_name("exchange.declare").encode(exchange="e", type="fanout", durable=True, internal=True, no_wait=True)
    assert payload == struct.pack(">HHH", 40, 10, 0) + b"\x01e\x06fanout" + b"\x1a" + b"\x00\x00\x00\x00"


def test_basic_deliver_bit_sits_between_strings():
    payload = by_name("basic.deliver").encode(
        consumer_tag="c", delivery_tag=2, redelivered=True, exchange="e", routing_key="r"
    )
    assert payload == struct.pack(">HH", 60, 60) + b"\x01c" + struct.pack(">Q", 2) + b"\x01" + b"\x01e\x01r"


def _synthetic(fields):
    """A method class made by the codec factories from a synthetic field list."""
    return codecs.make_method_class("test", 99, ("probe", 1, False, False, (), tuple(fields)))


def test_more_than_eight_consecutive_bits_take_another_octet():
    cls = _synthetic([("b%d" % i, "bit", False, "bit") for i in range(10)])
    head = struct.pack(">HH", 99, 1)
    assert cls.encode(b0=True) == head + b"\x01\x00"
    assert cls.encode(b7=True) == head + b"\x80\x00"
    assert cls.encode(b8=True) == head + b"\x00\x01"
    assert cls.encode(b9=True, b1=True) == head + b"\x02\x02"
    values = {"b%d" % i: i in (0, 3, 8) for i in range(10)}
    decoded, end = cls.decode(cls.encode(**values)[4:], 0)
    assert decoded == values and end == 2


def test_a_non_bit_field_ends_a_run_of_bits():
    cls = _synthetic(
        [
            ("a", "bit", False, "bit"),
            ("n", "octet", False, "octet"),
            ("b", "bit", False, "bit"),
            ("c", "bit", False, "bit"),
        ]
    )
    payload = cls.encode(a=True, n=7, c=True)
    assert payload[4:] == b"\x01\x07\x02"
    assert cls.decode(payload[4:], 0) == ({"a": True, "n": 7, "b": False, "c": True}, 3)


# --- out-of-range and wrongly typed arguments --------------------------------------------------


@pytest.mark.parametrize(
    "name, fields, error",
    [
        ("basic.ack", {"delivery_tag": -1}, ValueError),
        ("basic.ack", {"delivery_tag": 2**64}, ValueError),
        ("basic.ack", {"delivery_tag": "1"}, TypeError),
        ("basic.qos", {"prefetch_count": 65536}, ValueError),
        ("connection.tune", {"frame_max": 2**32}, ValueError),
        ("queue.declare", {"queue": "q" * 256}, ValueError),
        ("queue.declare", {"queue": 5}, TypeError),
        ("queue.declare", {"arguments": [1]}, TypeError),
        ("queue.declare", {"arguments": {"x": object()}}, TypeError),
    ],
)
def test_bad_arguments_are_rejected_naming_the_field(name, fields, error):
    (field,) = fields
    with pytest.raises(error, match=field):
        by_name(name).encode(**fields)


def test_shortstr_limit_is_in_bytes_not_characters():
    cls = by_name("queue.declare")
    assert spec.decode_method(cls.encode(queue="é" * 127))[0]["queue"] == "é" * 127
    with pytest.raises(ValueError, match="255"):
        cls.encode(queue="é" * 128)


def test_strings_accept_bytes_and_invalid_utf8_survives():
    cls = by_name("basic.deliver")
    raw = b"caf\xe9-\xff"  # latin-1, not UTF-8
    payload = cls.encode(consumer_tag=raw, routing_key=bytearray(raw))
    decoded, _ = spec.decode_method(payload)
    assert decoded["consumer_tag"].encode("utf-8", "surrogateescape") == raw
    assert cls.encode(**decoded) == payload
    secret = by_name("connection.update-secret")
    payload = secret.encode(new_secret=b"\x00\xff\xfe token", reason="r")
    decoded, _ = spec.decode_method(payload)
    assert decoded["new_secret"].encode("utf-8", "surrogateescape") == b"\x00\xff\xfe token"
    assert secret.encode(**decoded) == payload


# --- byte-exact agreement with pamqp -----------------------------------------------------------

PAMQP_TABLE = sorted_keys(
    {
        "x-queue-type": "quorum",
        "x-max-length": 100_000,
        "x-neg": -1_000_000,
        "x-big": 2**40,
        "enabled": True,
        "off": False,
        "nested": {"deep": {"v": "é"}, "none": None},
        "list": ["a", 70_000, False, {"k": "v"}, ["inner"]],
    }
)

PAMQP_METHODS = [
    (
        "basic.publish",
        {"exchange": "amq.topic", "routing_key": "orders.é", "mandatory": True, "immediate": False},
        commands.Basic.Publish(exchange="amq.topic", routing_key="orders.é", mandatory=True),
    ),
    ("basic.ack", {"delivery_tag": 2**40 + 3, "multiple": True}, commands.Basic.Ack(2**40 + 3, True)),
    (
        "basic.nack",
        {"delivery_tag": 77, "multiple": False, "requeue": True},
        commands.Basic.Nack(77, False, True),
    ),
    (
        "basic.nack",
        {"delivery_tag": 78, "multiple": True, "requeue": False},
        commands.Basic.Nack(78, True, False),
    ),
    (
        "basic.consume",
        {
            "queue": "q",
            "consumer_tag": "ctag-1",
            "no_local": False,
            "no_ack": True,
            "exclusive": True,
            "no_wait": False,
            "arguments": {"x-priority": 70_000, "x-stream-offset": "first"},
        },
        commands.Basic.Consume(
            queue="q",
            consumer_tag="ctag-1",
            no_ack=True,
            exclusive=True,
            arguments={"x-priority": 70_000, "x-stream-offset": "first"},
        ),
    ),
    (
        "queue.declare",
        {
            "queue": "orders",
            "passive": False,
            "durable": True,
            "exclusive": False,
            "auto_delete": True,
            "no_wait": False,
            "arguments": PAMQP_TABLE,
        },
        commands.Queue.Declare(queue="orders", durable=True, auto_delete=True, arguments=PAMQP_TABLE),
    ),
    (
        "exchange.declare",
        {
            "exchange": "events",
            "type": "topic",
            "passive": False,
            "durable": True,
            "auto_delete": False,
            "internal": True,
            "no_wait": True,
            "arguments": {"alternate-exchange": "unrouted"},
        },
        commands.Exchange.Declare(
            exchange="events",
            exchange_type="topic",
            durable=True,
            internal=True,
            nowait=True,
            arguments={"alternate-exchange": "unrouted"},
        ),
    ),
    (
        "basic.qos",
        {"prefetch_size": 0, "prefetch_count": 250, "global": True},
        commands.Basic.Qos(prefetch_count=250, global_=True),
    ),
    (
        "connection.tune",
        {"channel_max": 2047, "frame_max": 131072, "heartbeat": 60},
        commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60),
    ),
    (
        "connection.start-ok",
        {
            "client_properties": {"capabilities": {"publisher_confirms": True}, "product": "puka"},
            "mechanism": "PLAIN",
            "response": "\x00guest\x00guest",
            "locale": "en_US",
        },
        commands.Connection.StartOk(
            client_properties={"capabilities": {"publisher_confirms": True}, "product": "puka"},
            mechanism="PLAIN",
            response="\x00guest\x00guest",
            locale="en_US",
        ),
    ),
    (
        "channel.close",
        {
            "reply_code": 406,
            "reply_text": "PRECONDITION_FAILED - inequivalent arg",
            "class_id": 50,
            "method_id": 10,
        },
        commands.Channel.Close(406, "PRECONDITION_FAILED - inequivalent arg", 50, 10),
    ),
    (
        "basic.deliver",
        {
            "consumer_tag": "ctag-1",
            "delivery_tag": 5,
            "redelivered": True,
            "exchange": "amq.direct",
            "routing_key": "rk",
        },
        commands.Basic.Deliver("ctag-1", 5, True, "amq.direct", "rk"),
    ),
    (
        "queue.declare-ok",
        {"queue": "amq.gen-x", "message_count": 3_000_000_000, "consumer_count": 2},
        commands.Queue.DeclareOk("amq.gen-x", 3_000_000_000, 2),
    ),
]


@pytest.mark.parametrize(
    "name, values, command", PAMQP_METHODS, ids=["%s-%d" % (m[0], i) for i, m in enumerate(PAMQP_METHODS)]
)
def test_methods_match_pamqp_byte_for_byte(name, values, command):
    cls = by_name(name)
    assert cls.method_id == command.index
    pamqp_payload = struct.pack(">I", command.index) + command.marshal()
    assert cls.encode(**values) == pamqp_payload
    decoded, end = spec.decode_method(pamqp_payload)
    assert type(decoded) is cls
    assert_identical(decoded, values)
    assert end == len(pamqp_payload)


PAMQP_PROPS = {
    "content_type": "application/json",
    "content_encoding": "gzip",
    "headers": sorted_keys({"x-retries": 70_000, "origin": "é", "flag": True, "nested": {"k": ["v", None]}}),
    "delivery_mode": 2,
    "priority": 9,
    "correlation_id": "corr-1",
    "reply_to": "amq.rabbitmq.reply-to",
    "expiration": "60000",
    "message_id": "msg-1",
    "timestamp": 1_700_000_000,
    "type_": "order.created",
    "user_id": "guest",
    "app_id": "billing",
}


def _pamqp_properties(props):
    kwargs = {("message_type" if k == "type_" else k): v for k, v in props.items()}
    if "timestamp" in kwargs:
        kwargs["timestamp"] = datetime.datetime.fromtimestamp(kwargs["timestamp"], UTC)
    return commands.Basic.Properties(**kwargs)


@pytest.mark.parametrize(
    "props",
    [PAMQP_PROPS, {}] + [{name: value} for name, value in PAMQP_PROPS.items()],
    ids=["all", "none"] + list(PAMQP_PROPS),
)
def test_content_header_matches_pamqp_byte_for_byte(props):
    body_size = 5 * 2**30 + 7
    pamqp_payload = header.ContentHeader(0, body_size, _pamqp_properties(props)).marshal()
    ours = struct.pack(">HHQ", BASIC, 0, body_size) + spec.encode_properties(BASIC, props)
    assert ours == pamqp_payload
    assert BASIC_PROPS.decode_header(pamqp_payload) == (body_size, props)


def test_timestamp_property_accepts_an_aware_datetime():
    when = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert spec.encode_properties(BASIC, {"timestamp": when}) == spec.encode_properties(
        BASIC, {"timestamp": 1_700_000_000}
    )


#: Values pamqp and puka encode with the same tags.  Ints: pamqp picks the
#: smallest tag (b s u I i l), puka only I and l: they agree on
#: [-2**31, -32769], [65536, 2**31 - 1] and outside the 32-bit unsigned range.
SHARED_TABLE = sorted_keys(
    {
        "str": "héllo",
        "empty": "",
        "true": True,
        "false": False,
        "i32": 100_000,
        "neg_i32": -100_000,
        "i32max": 2**31 - 1,
        "i32min": -(2**31),
        "i64": 2**40,
        "neg_i64": -(2**40),
        "i64max": 2**63 - 1,
        "i64min": -(2**63),
        "none": None,
        "bytes": bytearray(b"\x00\xff\x10"),
        "decimal": Decimal("-123.45"),
        "small_decimal": Decimal("0.001"),
        "when": datetime.datetime(2024, 2, 29, 12, 0, 1, tzinfo=UTC),
        "nested": {"a": {"b": {"c": "deep"}}, "n": None},
        "list": ["x", 70_000, True, None, {"k": "v"}, ["y", []], Decimal("1.5")],
    }
)


def test_field_tables_match_pamqp_byte_for_byte():
    for key, value in SHARED_TABLE.items():
        assert spec.encode_table({key: value}) == pamqp_encode.field_table({key: value}), key
    assert spec.encode_table(SHARED_TABLE) == pamqp_encode.field_table(SHARED_TABLE)
    assert spec.encode_table({}) == pamqp_encode.field_table({}) == b"\x00\x00\x00\x00"


def test_pamqp_field_tables_decode_to_the_same_values():
    # Includes the tags puka decodes but never writes: b s u i f (pamqp writes them).
    table = dict(
        SHARED_TABLE,
        octet=-5,
        short=-300,
        ushort=40_000,
        uint=3_000_000_000,
        float32=1.5,
        zero=0,
        list=[1, -2, 300, 40_000, 0.25],
    )
    raw = pamqp_encode.field_table(table)
    for tag in b"bsuif":
        assert bytes([tag]) in raw
    decoded, end = spec.decode_table(raw)
    assert end == len(raw)
    assert_identical(decoded, table)


# --- field tables as RabbitMQ speaks them ------------------------------------------------------


def _entry(key, tag, value_bytes):
    raw_key = key.encode()
    return bytes([len(raw_key)]) + raw_key + tag + value_bytes


def _table(*entries):
    payload = b"".join(entries)
    return struct.pack(">I", len(payload)) + payload


def _longstr(raw):
    return struct.pack(">I", len(raw)) + raw


@pytest.mark.parametrize(
    "tag, value_bytes, expected",
    [
        (b"t", b"\x01", True),
        (b"t", b"\x00", False),
        (b"b", b"\xfe", -2),
        (b"B", b"\xfe", 254),
        (b"s", b"\xff\xfe", -2),
        (b"u", b"\xff\xfe", 65534),
        (b"I", b"\xff\xff\xff\xfe", -2),
        (b"i", b"\xff\xff\xff\xfe", 2**32 - 2),
        (b"l", b"\xff" * 7 + b"\xfe", -2),
        (b"L", b"\xff" * 7 + b"\xfe", -2),
        (b"l", b"\x7f" + b"\xff" * 7, 2**63 - 1),
        (b"f", struct.pack(">f", -1.25), -1.25),
        (b"d", struct.pack(">d", 0.1), 0.1),
        (b"D", b"\x02" + struct.pack(">i", -12345), Decimal("-123.45")),
        (b"D", b"\x00" + struct.pack(">i", 7), Decimal(7)),
        (b"S", _longstr("é ✓".encode()), "é ✓"),
        (b"x", _longstr(b"\x00\xff"), b"\x00\xff"),
        (b"A", _longstr(b"I\x00\x00\x00\x01" + b"S" + _longstr(b"a") + b"V"), [1, "a", None]),
        (b"T", struct.pack(">Q", 1_700_000_000), datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (b"F", _table(_entry("k", b"t", b"\x01")), {"k": True}),
        (b"V", b"", None),
    ],
)
def test_decoding_every_tag_rabbitmq_sends(tag, value_bytes, expected):
    raw = _table(_entry("key", tag, value_bytes), _entry("after", b"I", struct.pack(">i", 42)))
    decoded, end = spec.decode_table(b"\xaa" + raw + b"\xbb", 1)
    assert end == 1 + len(raw)
    assert_identical(decoded, {"key": expected, "after": 42})
    if tag == b"T":
        assert decoded["key"].utcoffset() == datetime.timedelta(0)


def test_decoded_tags_are_exactly_those_rabbitmq_uses():
    assert sorted(spec.tables.DECODED_TAGS) == sorted("tbBsuIilLfdDSxATFV")
    with pytest.raises(DecodeError, match="unknown field value type 'Z'"):
        spec.decode_table(_table(_entry("k", b"Z", b"\x00")))


def _tag_of(value):
    raw = spec.encode_table({"k": value})
    assert raw[4:6] == b"\x01k"
    return raw[6:7]


class _IntSub(int):
    pass


@pytest.mark.parametrize(
    "value, tag",
    [
        (True, b"t"),
        (False, b"t"),
        (0, b"I"),
        (-(2**31), b"I"),
        (2**31 - 1, b"I"),
        (2**31, b"l"),
        (-(2**31) - 1, b"l"),
        (2**63 - 1, b"l"),
        (-(2**63), b"l"),
        (_IntSub(5), b"I"),
        (1.5, b"d"),
        (1e308, b"d"),
        (Decimal("3.14"), b"D"),
        ("s", b"S"),
        (b"x", b"x"),
        (bytearray(b"x"), b"x"),
        (memoryview(b"x"), b"x"),
        (None, b"V"),
        ([1], b"A"),
        ((1, 2), b"A"),
        ({"a": 1}, b"F"),
        (datetime.datetime(2020, 1, 1, tzinfo=UTC), b"T"),
    ],
)
def test_encoding_picks_the_tag(value, tag):
    assert _tag_of(value) == tag


def test_encoded_values_are_exact():
    assert spec.encode_table({"k": 2**31}) == _table(_entry("k", b"l", struct.pack(">q", 2**31)))
    assert spec.encode_table({"k": 1.5}) == _table(_entry("k", b"d", struct.pack(">d", 1.5)))
    assert spec.encode_table({"k": Decimal("-1.50")}) == _table(_entry("k", b"D", b"\x02" + struct.pack(">i", -150)))
    assert spec.encode_table({"k": Decimal("5E+2")}) == _table(_entry("k", b"D", b"\x00" + struct.pack(">i", 500)))
    naive = datetime.datetime(2023, 11, 14, 22, 13, 20)
    paris = datetime.datetime(2023, 11, 14, 23, 13, 20, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    for when in (naive, paris):
        assert spec.encode_table({"k": when}) == _table(_entry("k", b"T", struct.pack(">Q", 1_700_000_000)))
    assert spec.encode_table({"k": ("a", 1)}) == _table(
        _entry("k", b"A", _longstr(b"S" + _longstr(b"a") + b"I" + struct.pack(">i", 1)))
    )


@pytest.mark.parametrize(
    "value",
    [
        2**63,
        -(2**63) - 1,
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1E-256"),
        Decimal(2**31),
        datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
    ids=[
        "int-too-big",
        "int-too-small",
        "decimal-nan",
        "decimal-inf",
        "decimal-scale",
        "decimal-value",
        "before-1970",
    ],
)
def test_values_that_do_not_fit_raise_value_error(value):
    with pytest.raises(ValueError, match="table key 'k'"):
        spec.encode_table({"k": value})


@pytest.mark.parametrize(
    "table, path",
    [
        ({"k": {1, 2}}, "table key 'k': unsupported type set"),
        ({"k": object()}, "table key 'k': unsupported type object"),
        ({"outer": {"inner": set()}}, "table key 'outer': table key 'inner': unsupported type set"),
        ({"a": [1, {"b": [0, 0, object()]}]}, "table key 'a': array index 1: table key 'b': array index 2"),
        ({1: "v"}, "table key 1: table keys must be str"),
    ],
)
def test_unsupported_values_raise_type_error_naming_the_path(table, path):
    with pytest.raises(TypeError) as info:
        spec.encode_table(table)
    assert path in str(info.value)


def test_keys_longer_than_255_bytes_are_rejected():
    spec.encode_table({"é" * 127: 1})
    with pytest.raises(ValueError):
        spec.encode_table({"é" * 128: 1})


def test_str_subclass_keys_do_not_depend_on_what_was_encoded_before():
    class Key(str):
        pass

    key = "only-used-by-this-test-7f3a"

    def outcome():
        try:
            return spec.encode_table({Key(key): 1})
        except TypeError as exc:
            return type(exc)

    before = outcome()
    spec.encode_table({key: 1})
    assert outcome() == before


def test_invalid_utf8_in_keys_and_strings_round_trips_losslessly():
    raw = _table(
        b"\x02\xff\xfe" + b"S" + _longstr(b"caf\xe9 \xc3\x28"),
        b"\x01k" + b"A" + _longstr(b"S" + _longstr(b"\x80")),
    )
    decoded, _ = spec.decode_table(raw)
    assert decoded == {
        b"\xff\xfe".decode("utf-8", "surrogateescape"): b"caf\xe9 \xc3\x28".decode("utf-8", "surrogateescape"),
        "k": [b"\x80".decode("utf-8", "surrogateescape")],
    }
    assert spec.encode_table(decoded) == raw


def test_malformed_tables_are_decode_errors():
    good = _table(_entry("k", b"S", _longstr(b"value")))
    for broken in (
        good[:-1],  # truncated
        struct.pack(">I", len(good) - 3) + good[4:],  # declared length cuts an entry
        good[:4] + b"\x09" + good[5:],  # key runs past the entry
        _table(_entry("k", b"S", struct.pack(">I", 100) + b"short")),  # string past the table
        _table(_entry("k", b"F", struct.pack(">I", 100))),  # nested table past the data
        _table(_entry("k", b"A", struct.pack(">I", 2) + b"I\x00")),  # array item past the array
        b"\x00\x00",
    ):
        with pytest.raises(DecodeError):
            spec.decode_table(broken)


def test_deep_nesting_is_a_decode_error_not_a_crash():
    raw = b"\x00\x00\x00\x00"
    for _ in range(20_000):
        raw = _table(b"\x01k" + b"F" + raw)
    with pytest.raises(DecodeError):
        spec.decode_table(raw)


def test_decoders_accept_a_memoryview():
    raw = spec.encode_table({"k": "v"})
    assert spec.decode_table(memoryview(raw)) == ({"k": "v"}, len(raw))
    payload = by_name("basic.deliver").encode(consumer_tag="c", routing_key="r")
    assert spec.decode_method(memoryview(payload))[0]["routing_key"] == "r"


def test_decoders_accept_a_bytearray():
    raw = spec.encode_table({"k": "v", "n": {"x": [b"\x00"]}})
    assert spec.decode_table(bytearray(raw)) == ({"k": "v", "n": {"x": [b"\x00"]}}, len(raw))
    payload = by_name("basic.deliver").encode(consumer_tag="c", routing_key="r")
    assert spec.decode_method(bytearray(payload))[0]["routing_key"] == "r"


# --- content properties ------------------------------------------------------------------------

ALL_PROPS = dict(PAMQP_PROPS, cluster_id="cluster-é")


def test_property_names_and_order():
    assert BASIC_PROPS.names == PROPERTY_NAMES
    assert set(ALL_PROPS) == set(PROPERTY_NAMES)


def test_all_fourteen_properties_round_trip():
    raw = spec.encode_properties(BASIC, ALL_PROPS)
    assert raw[:2] == b"\xff\xfc"  # bits 15..2: the fourteen properties, no continuation
    decoded, end = spec.decode_properties(raw, 0)
    assert_identical(decoded, ALL_PROPS)
    assert end == len(raw)
    assert spec.decode_properties(b"\x00" + raw, 1, BASIC) == (decoded, end + 1)


@pytest.mark.parametrize("position, name", list(enumerate(PROPERTY_NAMES)))
def test_each_property_has_its_flag_bit(position, name):
    raw = spec.encode_properties(BASIC, {name: ALL_PROPS[name]})
    assert struct.unpack(">H", raw[:2])[0] == 1 << (15 - position)
    assert spec.decode_properties(raw) == ({name: ALL_PROPS[name]}, len(raw))


def test_property_values_are_laid_out_in_flag_order():
    raw = spec.encode_properties(BASIC, {"cluster_id": "c", "delivery_mode": 2, "content_type": "t"})
    assert raw == b"\x90\x04" + b"\x01t" + b"\x02" + b"\x01c"


def test_no_properties_is_a_zero_flag_word():
    assert spec.encode_properties(BASIC, {}) == b"\x00\x00"
    assert spec.decode_properties(b"\x00\x00") == ({}, 2)


def test_bad_properties_are_rejected():
    with pytest.raises(ValueError, match="unknown property 'type'"):
        spec.encode_properties(BASIC, {"type": "t"})
    with pytest.raises(ValueError, match="delivery_mode"):
        spec.encode_properties(BASIC, {"delivery_mode": 256})
    with pytest.raises(TypeError, match="headers"):
        spec.encode_properties(BASIC, {"headers": {"k": object()}})
    with pytest.raises(ValueError):
        spec.encode_properties(spec.CLASS_IDS["queue"], {})
    with pytest.raises(DecodeError):
        spec.decode_properties(b"\x00\x00", 0, spec.CLASS_IDS["queue"])


def _header_payload(props_raw, body_size=10, class_id=BASIC):
    return struct.pack(">HHQ", class_id, 0, body_size) + props_raw


def test_decode_header_returns_body_size_and_properties():
    payload = _header_payload(spec.encode_properties(BASIC, ALL_PROPS), body_size=2**40)
    assert BASIC_PROPS.decode_header(payload) == (2**40, ALL_PROPS)
    assert BASIC_PROPS.decode_header(_header_payload(b"\x00\x00", 0)) == (0, {})


def test_decode_header_rejects_trailing_bytes_and_other_classes():
    raw = spec.encode_properties(BASIC, {"content_type": "t"})
    with pytest.raises(DecodeError, match="after its properties"):
        BASIC_PROPS.decode_header(_header_payload(raw) + b"\x00")
    with pytest.raises(DecodeError, match="class 50"):
        BASIC_PROPS.decode_header(_header_payload(raw, class_id=50))


@pytest.mark.parametrize("cut", [0, 5, 13, 14])
def test_decode_header_rejects_truncated_payloads(cut):
    payload = _header_payload(spec.encode_properties(BASIC, {"content_type": "text/plain"}))
    with pytest.raises(DecodeError):
        BASIC_PROPS.decode_header(payload[:cut])


@pytest.mark.parametrize("cut", [15, 16, 24])
def test_decode_header_rejects_a_property_running_past_the_end(cut):
    payload = _header_payload(spec.encode_properties(BASIC, {"content_type": "text/plain"}))
    with pytest.raises(DecodeError):
        BASIC_PROPS.decode_header(payload[:cut])


def test_continuation_flag_words_are_parsed():
    # content_type (bit 15) + continuation (bit 0), then an empty second word.
    raw = b"\x80\x01" + b"\x00\x00" + b"\x01t"
    assert spec.decode_properties(raw) == ({"content_type": "t"}, len(raw))
    assert BASIC_PROPS.decode_header(_header_payload(raw)) == (10, {"content_type": "t"})
    # cluster_id (bit 2) + continuation; a second word that continues too; a third.
    raw = b"\x00\x05" + b"\x00\x01" + b"\x00\x00" + b"\x01c"
    assert spec.decode_properties(raw) == ({"cluster_id": "c"}, len(raw))
    assert BASIC_PROPS.decode_header(_header_payload(raw)) == (10, {"cluster_id": "c"})


@pytest.mark.parametrize(
    "flags",
    [b"\x00\x01" + b"\x80\x00", b"\x00\x01" + b"\x00\x03" + b"\x00\x02", b"\x00\x02", b"\x00\x01\x00\x02"],
    ids=["second-word-bit-15", "third-word", "bit-1-first-word", "bit-1-second-word"],
)
def test_flags_of_unknown_properties_are_decode_errors(flags):
    with pytest.raises(DecodeError, match="unknown properties"):
        spec.decode_properties(flags + b"\x00" * 8)
    with pytest.raises(DecodeError, match="unknown properties"):
        BASIC_PROPS.decode_header(_header_payload(flags + b"\x00" * 8))


# --- errors --------------------------------------------------------------------------------------

SOFT_CODES = {311, 312, 313, 403, 404, 405, 406}
HARD_CODES = {320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541}


def test_every_reply_code_has_its_error_class():
    assert set(spec.ERRORS) == SOFT_CODES | HARD_CODES
    for code, cls in spec.ERRORS.items():
        assert cls.reply_code == code
        assert issubclass(cls, puka.AMQPError)
        base = puka.AMQPSoftError if code in SOFT_CODES else puka.AMQPHardError
        assert issubclass(cls, base), cls
        assert getattr(puka, cls.__name__) is cls
        assert getattr(spec, cls.__name__) is cls
        assert spec.error_for(code) is cls
    assert spec.error_for(999) is puka.AMQPError


def test_known_error_classes():
    assert puka.NotFound.reply_code == 404 and issubclass(puka.NotFound, puka.AMQPSoftError)
    assert puka.PreconditionFailed.reply_code == 406
    assert puka.AccessRefused.reply_code == 403
    assert puka.NoRoute.reply_code == 312 and issubclass(puka.NoRoute, puka.AMQPSoftError)
    assert puka.ConnectionForced.reply_code == 320 and issubclass(puka.ConnectionForced, puka.AMQPHardError)
    assert puka.AMQPSyntaxError.reply_code == 502 and issubclass(puka.AMQPSyntaxError, puka.AMQPHardError)
    assert puka.AMQPNotImplemented.reply_code == 540
    assert issubclass(puka.AMQPNotImplemented, puka.AMQPHardError)
    # The renames keep the builtins SyntaxError and NotImplemented out of the way.
    assert not hasattr(puka, "SyntaxError") and not hasattr(puka, "NotImplemented")
    assert puka.AMQPSoftError.severity == "soft" and puka.AMQPHardError.severity == "hard"


@pytest.mark.parametrize("cls", sorted(spec.ERRORS.values(), key=lambda c: c.reply_code), ids=lambda c: c.__name__)
def test_errors_pickle_with_their_reply_code_and_text(cls):
    err = cls("NOT_FOUND - no queue 'q'", class_id=50, method_id=10, method_name="queue.declare")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert copy.reply_code == cls.reply_code
    assert copy.reply_text == "NOT_FOUND - no queue 'q'"
    assert (copy.class_id, copy.method_id, copy.method_name) == (50, 10, "queue.declare")
    assert str(copy) == str(err) == "%d NOT_FOUND - no queue 'q' (on queue.declare)" % cls.reply_code


def test_generic_error_pickles_its_reply_code():
    err = puka.AMQPError("odd", reply_code=999)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is puka.AMQPError and copy.reply_code == 999 and copy.reply_text == "odd"


# --- Hypothesis: encode -> decode identity -----------------------------------------------------


def _fits_shortstr(text):
    return len(text.encode("utf-8", "surrogateescape")) <= 255


#: Text, including invalid UTF-8 carried as surrogate escapes.
texts = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
short_texts = st.one_of(
    st.text(max_size=100).filter(_fits_shortstr),
    st.binary(max_size=255).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
decimals = st.builds(
    lambda coefficient, scale: Decimal(coefficient).scaleb(-scale),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 255),
)
timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=0))
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.binary(max_size=40),
    st.none(),
    decimals,
    timestamps,
)
field_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(short_texts, children, max_size=5),
    ),
    max_leaves=15,
)
tables = st.dictionaries(short_texts, field_values, max_size=6)


@FAST
@given(tables)
def test_generated_tables_round_trip(table):
    raw = spec.encode_table(table)
    decoded, end = spec.decode_table(raw + b"trailing", 0)
    assert end == len(raw)
    assert_identical(decoded, table)
    assert list(decoded) == list(table)  # order kept (and nested order: re-encoding is identical)
    assert spec.encode_table(decoded) == raw


_WIRE_STRATEGIES = {
    "bit": st.booleans(),
    "octet": st.integers(0, 2**8 - 1),
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(0, 2**64 - 1),
    "shortstr": short_texts,
    "longstr": texts,
    "table": tables,
}


def _method_values(cls):
    return st.fixed_dictionaries({f.name: _WIRE_STRATEGIES[f.type] for f in cls.fields if not f.reserved}).map(
        lambda values: (cls, values)
    )


method_values = st.sampled_from(METHOD_CLASSES).flatmap(_method_values)


@FAST
@given(method_values)
def test_generated_method_fields_round_trip(cls_values):
    cls, values = cls_values
    payload = cls.encode(**values)
    decoded, end = spec.decode_method(payload)
    assert type(decoded) is cls
    assert_identical(decoded, values)
    assert end == len(payload)


property_values = st.fixed_dictionaries(
    {},
    optional={name: _WIRE_STRATEGIES[wire] for name, wire in zip(BASIC_PROPS.names, BASIC_PROPS.types)},
)


@FAST
@given(property_values, st.integers(0, 2**64 - 1))
def test_generated_properties_round_trip(props, body_size):
    raw = spec.encode_properties(BASIC, props)
    decoded, end = spec.decode_properties(raw)
    assert_identical(decoded, props)
    assert end == len(raw)
    assert BASIC_PROPS.decode_header(_header_payload(raw, body_size)) == (body_size, props)


# --- Hypothesis: malformed input raises DecodeError and nothing else ---------------------------


def test_decode_error_is_a_value_error():
    assert issubclass(DecodeError, ValueError)
    assert spec.DecodeError is spec.tables.DecodeError


@st.composite
def mutated(draw, valid):
    """A valid encoding with bytes flipped, cut off or appended (or random bytes)."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=12))
    return bytes(data)


method_payloads = method_values.map(lambda cv: cv[0].encode(**cv[1]))
property_payloads = property_values.map(lambda p: spec.encode_properties(BASIC, p))
table_payloads = tables.map(spec.encode_table)
random_method_payloads = st.builds(
    lambda cls, rest: struct.pack(">I", cls.method_id) + rest,
    st.sampled_from(METHOD_CLASSES),
    st.binary(max_size=60),
)


def _only_decode_errors(decode, data, *args):
    try:
        decode(data, *args)
    except DecodeError:
        pass


@FAST
@given(st.one_of(st.binary(max_size=80), random_method_payloads, mutated(method_payloads)))
def test_malformed_methods_raise_only_decode_error(data):
    _only_decode_errors(spec.decode_method, data, 0)


@FAST
@given(st.one_of(st.binary(max_size=80), mutated(property_payloads)))
def test_malformed_properties_raise_only_decode_error(data):
    _only_decode_errors(spec.decode_properties, data, 0)


@FAST
@given(st.one_of(st.binary(max_size=80), mutated(table_payloads)))
def test_malformed_tables_raise_only_decode_error(data):
    _only_decode_errors(spec.decode_table, data, 0)


@FAST
@given(st.one_of(st.binary(max_size=80), mutated(property_payloads.map(_header_payload))))
@example(b"")
def test_malformed_content_headers_raise_only_decode_error(data):
    _only_decode_errors(BASIC_PROPS.decode_header, data)


@FAST
@given(method_payloads, st.binary(min_size=1, max_size=20))
def test_valid_methods_followed_by_more_bytes_decode_and_stop(payload, extra):
    decoded, end = spec.decode_method(payload + extra)
    assert end == len(payload)


def test_a_timestamp_argument_takes_a_datetime_or_seconds():
    """No method of the XML has a timestamp field; the generic encoder still handles one."""
    import datetime

    from puka.spec.codecs import Field, method_encoder

    fields = (Field("when", "timestamp", False, "timestamp"), Field("flag", "bit", False, "bit"))
    encode = method_encoder(0x000A00FF, fields, "test.stamped")
    moment = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    expected = struct.pack(">IQB", 0x000A00FF, 1577836800, 1)
    assert encode(moment, True) == expected
    assert encode(1577836800, True) == expected
    with pytest.raises(ValueError, match="test.stamped when"):
        encode(-1, False)
