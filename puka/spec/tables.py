"""AMQP field tables and arrays, as RabbitMQ speaks them.

Theory of operation: a table on the wire is a 32-bit byte length followed by
``shortstr key, type tag, value`` entries; an array is the same without keys.
Decoding dispatches on the tag through a dict of small closures; encoding
dispatches on the *exact* Python type (so ``bool`` never falls into ``int``)
and falls back to ``isinstance`` for subclasses.

Decoding accepts every tag RabbitMQ produces (``t b B s u I i l L f d D S x A T
F V``; ``b`` is signed, ``l`` and ``L`` are both signed 64-bit, as RabbitMQ
reads them).  Encoding is lossless and never picks the 32-bit float::

    bool -> t   int -> I (signed 32) or l (signed 64), larger -> ValueError
    float -> d (finite only)  Decimal -> D  str -> S  bytes/bytearray/memoryview -> x
    None -> V   list/tuple -> A  dict -> F  datetime -> T (whole seconds, UTC)

Strings that are not valid UTF-8 decode with ``surrogateescape`` and encode
back to the same bytes.  The ``*_raw`` functions may raise IndexError or
struct.error on malformed input; the public wrappers in :mod:`puka.spec` turn
everything into ``DecodeError``.
"""

from __future__ import annotations

import sys
from struct import Struct
from struct import error as StructError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime
    import decimal
    from collections.abc import Callable
    from typing import Any

_u8 = Struct(">B").unpack_from
_i8 = Struct(">b").unpack_from
_u16 = Struct(">H").unpack_from
_i16 = Struct(">h").unpack_from
_u32 = Struct(">I").unpack_from
_i32 = Struct(">i").unpack_from
_i64 = Struct(">q").unpack_from
_u64 = Struct(">Q").unpack_from
_f32 = Struct(">f").unpack_from
_f64 = Struct(">d").unpack_from
_decimal = Struct(">Bi").unpack_from

_pack_u32 = Struct(">I").pack
#: One-byte length prefixes, prebuilt.
SHORT_LEN = [bytes((i,)) for i in range(256)]


class DecodeError(ValueError):
    """Malformed AMQP data: the only exception decoding may raise."""


#: What the decoders raise on malformed input before it is reported as a DecodeError.
DECODE_FAILURES = (IndexError, KeyError, StructError, OverflowError, RecursionError, ValueError)


def describe_failure(exc: BaseException) -> str:
    """A short reason for a DecodeError raised in place of ``exc``."""
    if isinstance(exc, (IndexError, StructError)):
        return "data ends too soon"
    if isinstance(exc, KeyError):
        tag = exc.args[0] if exc.args else None
        return "unknown field value type %r" % (chr(tag) if isinstance(tag, int) and 0 <= tag < 256 else tag,)
    if isinstance(exc, RecursionError):
        return "tables nested too deeply"
    return str(exc) or type(exc).__name__


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def decode_shortstr_raw(buf: Any, offset: int) -> tuple[str, int]:
    n = buf[offset]
    offset += 1
    end = offset + n
    if end > len(buf):
        raise DecodeError("short string runs past the end of the data")
    return _text(bytes(buf[offset:end])), end


def _longstr_bytes(buf: Any, offset: int) -> tuple[bytes, int]:
    (n,) = _u32(buf, offset)
    offset += 4
    end = offset + n
    if end > len(buf):
        raise DecodeError("long string of %d bytes runs past the end of the data" % n)
    return bytes(buf[offset:end]), end


def longstr_text_raw(buf: Any, offset: int) -> tuple[str, int]:
    raw, offset = _longstr_bytes(buf, offset)
    return _text(raw), offset


def _timestamp(buf: Any, offset: int) -> tuple[Any, int]:
    from datetime import datetime, timedelta, timezone

    (seconds,) = _u64(buf, offset)
    try:
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds), offset + 8
    except OverflowError:
        # Beyond datetime's range: keep the number rather than lose it.
        return seconds, offset + 8


def _decimal_value(buf: Any, offset: int) -> tuple[decimal.Decimal, int]:
    from decimal import Decimal

    scale, value = _decimal(buf, offset)
    return Decimal(value).scaleb(-scale), offset + 5


def _fixed(unpack: Callable[..., tuple[Any, ...]], size: int) -> Callable[[Any, int], tuple[Any, int]]:
    def decode(buf: Any, offset: int) -> tuple[Any, int]:
        return unpack(buf, offset)[0], offset + size

    return decode


def _bool(buf: Any, offset: int) -> tuple[bool, int]:
    return buf[offset] != 0, offset + 1


def _void(buf: Any, offset: int) -> tuple[None, int]:
    return None, offset


def table_decoder(
    before: str | None = None, key: str | None = None, after: str | None = None, make: Callable[[], Any] = dict
) -> Callable[[Any, int], tuple[Any, int]]:
    """A closure that decodes a field table at ``offset``; returns ``(table, offset)``.

    With ``key`` it decodes a run of fields into a new ``make()`` result
    instead, returned as ``(result, offset)``: an optional short string
    stored under ``before``, the table under ``key``, an optional octet under
    ``after`` -- the usual content properties (content_type, headers,
    delivery_mode) in one call, with the table loop written once, here.
    """
    whole = key is not None
    has_before = before is not None
    has_after = after is not None
    plain = make is dict  # a literal is cheaper than a call

    def decode_table(buf: Any, offset: int) -> tuple[Any, int]:
        if whole:
            r = {} if plain else make()
            if has_before:
                end = offset + 1 + buf[offset]
                try:
                    r[before] = buf[offset + 1 : end].decode()
                except UnicodeDecodeError:
                    r[before] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
                offset = end
        (n,) = _u32(buf, offset)
        offset += 4
        end = offset + n
        if end > len(buf):
            raise DecodeError("table of %d bytes runs past the end of the data" % n)
        table: dict[str, Any] = {}
        decoders = _DECODERS
        # The common tags are inlined.  A string running past `end` (or past the
        # buffer) leaves `offset` beyond `end`, caught by the check after the loop.
        while offset < end:
            key_end = offset + 1 + buf[offset]
            try:
                name = buf[offset + 1 : key_end].decode()
            except UnicodeDecodeError:
                name = buf[offset + 1 : key_end].decode("utf-8", "surrogateescape")
            tag = buf[key_end]
            if tag == 83:  # S
                offset = key_end + 5 + _u32(buf, key_end + 1)[0]
                try:
                    table[name] = buf[key_end + 5 : offset].decode()
                except UnicodeDecodeError:
                    table[name] = buf[key_end + 5 : offset].decode("utf-8", "surrogateescape")
            elif tag == 73:  # I
                table[name] = _i32(buf, key_end + 1)[0]
                offset = key_end + 5
            elif tag == 116:  # t
                table[name] = buf[key_end + 1] != 0
                offset = key_end + 2
            else:
                table[name], offset = decoders[tag](buf, key_end + 1)
        if offset != end:
            raise DecodeError("table entries overrun the table's declared length")
        if whole:
            r[key] = table
            if has_after:
                r[after] = buf[offset]
                offset += 1
            return r, offset
        return table, offset

    return decode_table


#: ``decode_table_raw(buf, offset) -> (table, offset)``
decode_table_raw = table_decoder()


def _array(buf: Any, offset: int) -> tuple[list[Any], int]:
    (n,) = _u32(buf, offset)
    offset += 4
    end = offset + n
    if end > len(buf):
        raise DecodeError("array of %d bytes runs past the end of the data" % n)
    items = []
    decoders = _DECODERS
    while offset < end:
        value, offset = decoders[buf[offset]](buf, offset + 1)
        items.append(value)
    if offset != end:
        raise DecodeError("array items overrun the array's declared length")
    return items, offset


_DECODERS: dict[int, Callable[[Any, int], tuple[Any, int]]] = {
    ord("t"): _bool,
    ord("b"): _fixed(_i8, 1),
    ord("B"): _fixed(_u8, 1),
    ord("s"): _fixed(_i16, 2),
    ord("u"): _fixed(_u16, 2),
    ord("I"): _fixed(_i32, 4),
    ord("i"): _fixed(_u32, 4),
    ord("l"): _fixed(_i64, 8),
    ord("L"): _fixed(_i64, 8),
    ord("f"): _fixed(_f32, 4),
    ord("d"): _fixed(_f64, 8),
    ord("D"): _decimal_value,
    ord("S"): longstr_text_raw,
    ord("x"): _longstr_bytes,
    ord("A"): _array,
    ord("T"): _timestamp,
    ord("F"): decode_table_raw,
    ord("V"): _void,
}

#: The tags this decoder understands, for documentation and tests.
DECODED_TAGS = "".join(sorted(chr(t) for t in _DECODERS))


# --- encoding -------------------------------------------------------------------------------

_tag_bool = Struct(">cB").pack
_tag_i32 = Struct(">ci").pack
_tag_i64 = Struct(">cq").pack
_tag_f64 = Struct(">cd").pack
_tag_u64 = Struct(">cQ").pack
_tag_len = Struct(">cI").pack
_tag_decimal = Struct(">cBi").pack


def _enc_bool(value: bool) -> bytes:
    return _tag_bool(b"t", 1 if value else 0)


def _enc_int(value: int) -> bytes:
    if -0x80000000 <= value <= 0x7FFFFFFF:
        return _tag_i32(b"I", value)
    if -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
        return _tag_i64(b"l", value)
    raise ValueError("integer %d does not fit a signed 64-bit table value" % value)


def _enc_float(value: float) -> bytes:
    if value - value != 0:  # inf - inf and nan - nan are nan; RabbitMQ closes the connection (541) for them
        raise ValueError("float %r is not finite: RabbitMQ cannot take it" % value)
    return _tag_f64(b"d", value)


def _enc_str(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    return _tag_len(b"S", len(raw)) + raw


def _enc_bytes(value: Any) -> bytes:
    raw = bytes(value)
    return _tag_len(b"x", len(raw)) + raw


def _enc_none(value: None) -> bytes:
    return b"V"


def _enc_decimal(value: decimal.Decimal) -> bytes:
    if not value.is_finite():
        raise ValueError("decimal %s cannot be encoded" % value)
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0")
    if sign:
        unscaled = -unscaled
    if exponent > 0:
        unscaled *= 10**exponent
        exponent = 0
    scale = -exponent
    if scale > 255 or not -0x80000000 <= unscaled <= 0x7FFFFFFF:
        raise ValueError("decimal %s does not fit an AMQP decimal (scale octet, signed 32-bit value)" % value)
    return _tag_decimal(b"D", scale, unscaled)


def _enc_datetime(value: datetime.datetime) -> bytes:
    seconds = datetime_seconds(value)
    if seconds < 0:
        raise ValueError("timestamp %s is before 1970" % value)
    return _tag_u64(b"T", seconds)


def _enc_list(value: Any) -> bytes:
    parts = []
    index = 0
    try:
        for index, item in enumerate(value):  # noqa: B007 (named in the error)
            parts.append(encode_value(item))
    except (TypeError, ValueError) as exc:
        raise _keyed(exc, "array index %d" % index) from None
    payload = b"".join(parts)
    return _tag_len(b"A", len(payload)) + payload


def _enc_dict(value: dict[str, Any]) -> bytes:
    return b"F" + encode_table(value)


def datetime_seconds(value: datetime.datetime) -> int:
    """Whole seconds since the epoch; a naive datetime is taken as UTC."""
    from datetime import datetime, timedelta, timezone

    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(seconds=1)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
    type(None): _enc_none,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_dict,
}

# For subclasses, in the order they must be tried (bool before int).
_BASES = (bool, int, float, str, bytes, bytearray, memoryview, list, tuple, dict)


def _encoder_for(value: Any) -> Callable[[Any], bytes] | None:
    for base in _BASES:
        if isinstance(value, base):
            return _ENCODERS[base]
    # decimal and datetime are imported only by programs that use them: a value
    # can only be a Decimal or a datetime if its module is already loaded.
    dec = sys.modules.get("decimal")
    if dec is not None and isinstance(value, dec.Decimal):
        return _enc_decimal
    dt = sys.modules.get("datetime")
    if dt is not None and isinstance(value, dt.datetime):
        return _enc_datetime
    return None


def encode_value(value: Any) -> bytes:
    """Encode one tagged field value (type tag + value)."""
    enc = _ENCODERS.get(type(value)) or _encoder_for(value)
    if enc is None:
        raise TypeError("unsupported type %s" % type(value).__name__)
    return enc(value)


def _keyed(exc: Exception, where: str) -> Exception:
    """The same kind of error, its message prefixed with where it happened."""
    kind = TypeError if isinstance(exc, TypeError) else ValueError
    return kind("%s: %s" % (where, exc))


#: Keys recur from message to message: their encodings (length prefix + UTF-8) are kept.
_ENCODED_KEYS: dict[str, bytes] = {}


def _encode_key(key: Any) -> bytes:
    if not isinstance(key, str):
        raise TypeError("table keys must be str, not %s" % type(key).__name__)
    raw = key.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        raise ValueError("table key is longer than 255 bytes")
    encoded = SHORT_LEN[len(raw)] + raw
    if key.__class__ is str:  # str subclasses are encoded the same, but not kept
        if len(_ENCODED_KEYS) >= 4096:
            _ENCODED_KEYS.clear()
        _ENCODED_KEYS[key] = encoded
    return encoded


def encode_table(table: dict[str, Any] | None) -> bytes:
    """Encode a dict as an AMQP field table (length-prefixed)."""
    if not table:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    append = parts.append
    encoders = _ENCODERS
    keys = _ENCODED_KEYS
    key: Any = None
    try:
        for key, value in table.items():
            encoded_key = keys.get(key) or _encode_key(key)
            cls = value.__class__
            # The usual header values are inlined: str, 32-bit int, bool.
            if cls is str:
                try:
                    raw = value.encode()
                except UnicodeEncodeError:
                    raw = value.encode("utf-8", "surrogateescape")
                append(encoded_key + _tag_len(b"S", len(raw)) + raw)
            elif cls is int and -0x80000000 <= value <= 0x7FFFFFFF:
                append(encoded_key + _tag_i32(b"I", value))
            elif cls is bool:
                append(encoded_key + (b"t\x01" if value else b"t\x00"))
            else:
                enc = encoders.get(cls)
                append(encoded_key + (enc(value) if enc is not None else encode_value(value)))
    except (TypeError, ValueError) as exc:
        raise _keyed(exc, "table key %r" % (key,)) from None
    payload = b"".join(parts)
    return _pack_u32(len(payload)) + payload
