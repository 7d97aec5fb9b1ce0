"""puka.spec: the template codecs agree with the generic ones, byte for byte.

The codecs of the usual layouts (strings, a table, a fixed group, strings) are
single closures made from templates; every other layout, and any value a
template does not take as it is, goes through the generic chain of pieces and
steps.  These tests run every method of the specification both ways, the
content properties under every order of their keys, headers holding nested
tables and arrays, and malformed input, which must give DecodeError only.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puka import spec
from puka.spec import DecodeError, codecs

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BASIC_PROPS = spec.PROPERTIES[60]

short_text = st.text(max_size=20).filter(lambda s: len(s.encode("utf-8", "surrogateescape")) <= 255)
table_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.text(max_size=10),
        st.binary(max_size=10),
        st.none(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
tables = st.dictionaries(st.text(max_size=8), table_values, max_size=4)


def _value(wire: str) -> st.SearchStrategy[object]:
    return {
        "bit": st.booleans(),
        "octet": st.integers(0, 255),
        "short": st.integers(0, 2**16 - 1),
        "long": st.integers(0, 2**32 - 1),
        "longlong": st.integers(0, 2**64 - 1),
        "timestamp": st.integers(0, 2**64 - 1),
        "shortstr": short_text,
        "longstr": st.text(max_size=30),
        "table": tables,
    }[wire]


def _values(cls: type[spec.Method]) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({f.name: _value(f.type) for f in cls.fields if not f.reserved})


ALL_METHODS = sorted(spec.METHODS.values(), key=lambda cls: cls.method_id)


def _generic(cls: type[spec.Method]) -> tuple[object, object]:
    """The generic encoder and decoder of a method, built without templates."""
    encode = codecs.method_encoder(cls.method_id, cls.fields, cls.name, template=False)
    decode = codecs.fields_decoder(cls.fields, dict, template=False)
    return encode, decode


@pytest.mark.parametrize("name", ["basic.deliver", "basic.get-ok", "basic.return", "basic.ack", "queue.declare-ok"])
def test_the_hot_methods_have_decode_templates(name):
    cls = spec.METHODS_BY_NAME[name]
    assert codecs.template_decoder(cls.fields, dict) is not None


@pytest.mark.parametrize("name", ["basic.publish", "basic.deliver", "basic.get", "basic.return", "basic.consume-ok"])
def test_the_hot_methods_have_encode_templates(name):
    cls = spec.METHODS_BY_NAME[name]
    keys = codecs.field_keys(cls.fields, by_name=False)
    generic = codecs.values_encoder(b"", cls.fields, keys, cls.name, template=False)
    assert codecs.template_encoder(b"", cls.fields, keys, cls.name, generic) is not None


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda cls: cls.name)
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_method_encodes_and_decodes_alike_through_template_and_generic_paths(cls, data):
    values = data.draw(_values(cls))
    args = [values[f.name] for f in cls.fields if not f.reserved]
    generic_encode, generic_decode = _generic(cls)
    payload = generic_encode(*args)
    assert cls.encode(**values) == payload
    assert cls.encode_args(*args) == payload
    decoded, end = cls.decode(payload, 4)
    assert dict(decoded) == generic_decode(payload, 4)[0] == values
    assert end == len(payload)
    assert spec.decode_method(payload) == (decoded, end)
    assert spec.decode_method(memoryview(payload)) == (decoded, end)


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda cls: cls.name)
def test_every_method_decodes_truncations_and_overruns_to_decode_error_only(cls):
    values = {f.name: "abc" for f in cls.fields if f.type == "shortstr" and not f.reserved}
    payload = cls.encode(**values)
    for cut in range(len(payload)):
        with pytest.raises(DecodeError):
            spec.decode_method(payload[:cut])
    # A string length one past the data: the decoder reads short and must notice.
    for position in range(4, len(payload)):
        if payload[position] == 3 and payload[position + 1 : position + 4] == b"abc":
            bad = payload[:position] + bytes([len(payload) - position]) + payload[position + 1 :]
            with pytest.raises(DecodeError):
                spec.decode_method(bad)


def test_template_encoders_hand_unusual_values_to_the_generic_path():
    publish = spec.METHODS_BY_NAME["basic.publish"]
    expected = publish.encode(exchange="ex", routing_key="rk", mandatory=True)
    for exchange in (b"ex", bytearray(b"ex"), memoryview(b"ex")):
        assert publish.encode(exchange=exchange, routing_key="rk", mandatory=True) == expected
    surrogate = b"\xff".decode("utf-8", "surrogateescape")
    assert spec.decode_method(publish.encode(routing_key=surrogate))[0]["routing_key"] == surrogate
    with pytest.raises(ValueError, match="basic.publish routing_key is longer than 255 bytes"):
        publish.encode(routing_key="é" * 128)
    with pytest.raises(TypeError, match="basic.publish exchange must be str or bytes, not int"):
        publish.encode(exchange=5)
    ack = spec.METHODS_BY_NAME["basic.ack"]
    with pytest.raises(ValueError, match="delivery_tag=-1 is out of range"):
        ack.encode(delivery_tag=-1)
    with pytest.raises(TypeError, match="basic.ack has no field.s. requeue"):
        ack.encode(delivery_tag=1, requeue=True)
    with pytest.raises(TypeError, match="takes 2 arguments, 3 given"):
        ack.encode_args(1, True, False)


def test_keyword_encoding_takes_defaults_for_missing_fields():
    deliver = spec.METHODS_BY_NAME["basic.deliver"]
    assert deliver.encode() == deliver.encode_args("", 0, False, "", "")
    assert deliver.encode(routing_key="r") == deliver.encode_args("", 0, False, "", "r")


# --- content properties ---------------------------------------------------------------------------

SAMPLE_PROPS = {
    "content_type": "application/json",
    "headers": {"x-trace": "00-abc-def-01", "attempt": 100000, "urgent": True},
    "delivery_mode": 2,
    "priority": 5,
    "correlation_id": "c-1",
    "reply_to": "amq.rabbitmq.reply-to",
    "timestamp": 1_700_000_000,
    "app_id": "app",
}


@pytest.mark.parametrize("size", [1, 2, 3])
def test_property_key_order_does_not_change_the_bytes(size):
    for names in itertools.combinations(SAMPLE_PROPS, size):
        reference = None
        for order in itertools.permutations(names):
            props = {name: SAMPLE_PROPS[name] for name in order}
            payload = spec.encode_properties(60, props)
            reference = reference or payload
            assert payload == reference, order
            assert spec.decode_properties(payload, 0) == (props, len(payload))


def _generic_properties(payload: bytes) -> dict[str, object]:
    """Decode a property list with generic steps only (no template)."""
    (flags,) = struct.unpack_from(">H", payload, 0)
    present = tuple(
        codecs.Field(name, wire, False, wire)
        for position, (name, wire) in enumerate(zip(BASIC_PROPS.names, BASIC_PROPS.types))
        if flags & (1 << (15 - position))
    )
    props, end = codecs.fields_decoder(present, dict, template=False)(payload, 2)
    assert end == len(payload)
    return dict(props)


property_dicts = st.fixed_dictionaries(
    {},
    optional={
        name: (_value(wire) if wire != "octet" else st.integers(0, 255))
        for name, wire in zip(BASIC_PROPS.names, BASIC_PROPS.types)
    },
)


@FAST
@given(property_dicts, st.randoms())
def test_properties_round_trip_in_any_key_order_and_agree_with_the_generic_decoder(props, rnd):
    names = list(props)
    rnd.shuffle(names)
    shuffled = {name: props[name] for name in names}
    payload = spec.encode_properties(60, props)
    assert spec.encode_properties(60, shuffled) == payload
    decoded, end = spec.decode_properties(payload, 0)
    assert end == len(payload)
    assert decoded == props == _generic_properties(payload)
    assert spec.decode_properties(memoryview(b"xx" + payload), 2) == (decoded, end + 2)
    header = struct.pack(">HHQ", 60, 0, 7) + payload
    assert BASIC_PROPS.decode_header(header) == (7, decoded)


@FAST
@given(st.none() | short_text, tables, st.none() | st.integers(0, 255))
def test_headers_with_nested_tables_and_arrays_decode_inline(content_type, headers, delivery_mode):
    props: dict[str, object] = {"headers": headers}
    if content_type is not None:
        props["content_type"] = content_type
    if delivery_mode is not None:
        props["delivery_mode"] = delivery_mode
    payload = spec.encode_properties(60, props)
    assert spec.decode_properties(payload, 0) == (props, len(payload))
    assert _generic_properties(payload) == props
    for cut in range(len(payload)):
        with pytest.raises(DecodeError):
            BASIC_PROPS.decode_header(struct.pack(">HHQ", 60, 0, 0) + payload[:cut])


def test_properties_with_a_table_length_past_the_end_are_decode_errors():
    payload = spec.encode_properties(60, {"content_type": "t", "headers": {"a": 1}, "delivery_mode": 2})
    table_at = 2 + 2  # flags, then the short string "t"
    for bad_length in (len(payload), 2**32 - 1, 3):
        bad = payload[:table_at] + struct.pack(">I", bad_length) + payload[table_at + 4 :]
        with pytest.raises(DecodeError):
            spec.decode_properties(bad, 0)
    bad = payload[:2] + b"\xff" + payload[3:]  # content_type's length far past the end
    with pytest.raises(DecodeError):
        spec.decode_properties(bad, 0)
    with pytest.raises(DecodeError, match="class 50"):
        spec.decode_properties(payload, 0, class_id=50)


def test_property_encoding_errors_name_the_property_whatever_the_key_order():
    for props in ({"delivery_mode": 300, "content_type": "x"}, {"content_type": "x", "delivery_mode": 300}):
        with pytest.raises(ValueError, match="property delivery_mode=300 is out of range"):
            spec.encode_properties(60, props)
    with pytest.raises(TypeError, match="property headers must be a dict"):
        spec.encode_properties(60, {"content_type": "x", "headers": [1]})
    with pytest.raises(ValueError, match="unknown property 'nope'"):
        spec.encode_properties(60, {"content_type": "x", "nope": 1})
    assert spec.encode_properties(60, {"content_type": b"x"}) == spec.encode_properties(60, {"content_type": "x"})
