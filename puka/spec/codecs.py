"""Closure factories: the model -> method classes, codecs and exceptions.

Theory of operation: nothing here knows any particular AMQP method.  Given a
method's field list, :func:`method_codec` plans its wire layout once --
consecutive fixed-width fields and packed bit octets merge into one
precompiled ``struct.Struct``; reserved fields fold into constants;
short strings, long strings and tables become small steps -- and returns an
encoder and a decoder that are closures over that plan.  Layouts of the usual
shape (short strings, at most one table, one fixed group, short strings) get
template closures that do the whole method or property list in one call
(:func:`template_encoder`, :func:`template_decoder`); every other layout, and
any value a template does not take as it is, goes through the generic chain
of pieces and steps, which also words the errors.  :func:`build` runs
the factories over the whole model and returns the namespace that
:mod:`puka.spec` exports: method classes keyed by method id, the property
codecs of content classes, and one exception class per error constant.

A method class is a ``dict`` subclass: a decoded method *is* the dict of its
fields (``result['routing_key']``), with class attributes describing it
(``name``, ``method_id``, ``class_id``, ``synchronous``, ``has_content``,
``fields``...).  Encoding never needs an instance: ``encode(**fields)`` and the
positional ``encode_args(*values)`` (closures of each class, reading the same
plan by name or by position) return the method payload (class id, method id,
arguments) ready for a method frame.  :func:`method_decoder_public` and
:func:`properties_decoder` make the public ``decode_method`` and
``decode_properties``: one lookup, one call.
"""

from __future__ import annotations

import sys
from struct import Struct
from struct import error as StructError

from .. import exceptions
from .tables import (
    DECODE_FAILURES,
    SHORT_LEN,
    DecodeError,
    datetime_seconds,
    decode_shortstr_raw,
    decode_table_raw,
    describe_failure,
    encode_table,
    longstr_text_raw,
    table_decoder,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_FIXED_FORMATS = {"octet": "B", "short": "H", "long": "I", "longlong": "Q", "timestamp": "Q"}
_DEFAULTS: dict[str, Any] = {
    "bit": False,
    "octet": 0,
    "short": 0,
    "long": 0,
    "longlong": 0,
    "timestamp": 0,
    "shortstr": "",
    "longstr": "",
    "table": None,
}
_u32 = Struct(">I")
_u16 = Struct(">H")

#: Property names that puka spells differently from the XML (after ``-`` -> ``_``).
PROPERTY_RENAMES = {"type": "type_", "reserved": "cluster_id"}
#: Reply-code names that puka spells differently from the XML's CamelCase.
ERROR_RENAMES = {"syntax-error": "AMQPSyntaxError", "not-implemented": "AMQPNotImplemented"}


class Field(tuple):  # type: ignore[type-arg]
    """One argument of a method: ``(name, type, reserved, domain)``.

    ``name`` is the Python name (``routing_key``), ``type`` the wire type
    (``shortstr``, ``bit``, ``table``...), ``reserved`` True for fields always
    sent as their default, ``domain`` the XML domain it came from.
    """

    __slots__ = ()

    def __new__(cls, name: str, type: str, reserved: bool, domain: str) -> Field:
        return tuple.__new__(cls, (name, type, reserved, domain))

    name = property(lambda self: self[0])
    type = property(lambda self: self[1])
    reserved = property(lambda self: self[2])
    domain = property(lambda self: self[3])

    def unreserved(self) -> Field:
        return Field(self[0], self[1], False, self[3])

    def __repr__(self) -> str:
        return "Field(%r, %r, reserved=%r)" % (self[0], self[1], self[2])


def py_name(name: str) -> str:
    return name.replace("-", "_")


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace(".", "-").split("-"))


# --- per-type value encoders ----------------------------------------------------------------


def _as_raw(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError("%s must be str or bytes, not %s" % (what, type(value).__name__))


def shortstr_encoder(what: str) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        if value.__class__ is str:
            try:
                raw = value.encode()
            except UnicodeEncodeError:
                raw = _as_raw(value, what)
        else:
            raw = _as_raw(value, what)
        if len(raw) > 255:
            raise ValueError("%s is longer than 255 bytes (%d)" % (what, len(raw)))
        return SHORT_LEN[len(raw)] + raw

    return encode


def longstr_encoder(what: str) -> Callable[[Any], bytes]:
    pack = _u32.pack

    def encode(value: Any) -> bytes:
        raw = _as_raw(value, what)
        if len(raw) > 0xFFFFFFFF:
            raise ValueError("%s is longer than 4 GiB" % what)
        return pack(len(raw)) + raw

    return encode


def table_encoder(what: str) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        try:
            return encode_table(value)
        except (TypeError, ValueError, AttributeError) as exc:
            if value is not None and not isinstance(value, dict):
                raise TypeError("%s must be a dict, not %s" % (what, type(value).__name__)) from None
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind("%s: %s" % (what, exc)) from None

    return encode


def fixed_encoder(wire: str, what: str) -> Callable[[Any], bytes]:
    pack = Struct(">" + _FIXED_FORMATS[wire]).pack

    def encode(value: Any) -> bytes:
        try:
            return pack(value)
        except StructError:
            raise _range_error(what, wire, value) from None

    if wire != "timestamp":
        return encode

    def encode_timestamp(value: Any) -> bytes:
        return encode(datetime_seconds(value) if _is_datetime(value) else value)

    return encode_timestamp


def value_encoder(wire: str, what: str) -> Callable[[Any], bytes]:
    """``encode(value) -> bytes`` for one field of wire type ``wire``; errors name ``what``."""
    if wire in _FIXED_FORMATS:
        return fixed_encoder(wire, what)
    return _VARIABLE_ENCODERS[wire](what)


def _is_datetime(value: Any) -> bool:
    dt = sys.modules.get("datetime")
    return dt is not None and isinstance(value, dt.datetime)


def _range_error(what: str, wire: str, value: Any) -> Exception:
    if not isinstance(value, int) or isinstance(value, bool):
        return TypeError("%s must be an int, not %s" % (what, type(value).__name__))
    bits = {"octet": 8, "short": 16, "long": 32, "longlong": 64, "timestamp": 64}[wire]
    return ValueError("%s=%d is out of range for an unsigned %d-bit field" % (what, value, bits))


_VARIABLE_ENCODERS = {"shortstr": shortstr_encoder, "longstr": longstr_encoder, "table": table_encoder}


_VARIABLE_DECODERS: dict[str, Callable[[Any, int], tuple[Any, int]]] = {
    "shortstr": decode_shortstr_raw,
    "longstr": longstr_text_raw,
    "table": decode_table_raw,
}


# --- the layout planner --------------------------------------------------------------------


def _plan(fields: tuple[Field, ...]) -> list[tuple[str, Any]]:
    """Group fields into wire segments.

    Returns a list of ``("fixed", [(slot_kind, x), ...])`` and
    ``(wire_type, field_index)`` items.  A fixed segment's slots are
    ``("value", field_index)`` or ``("bits", [field_index, ...])``; bits pack
    LSB first, at most eight to an octet, and any non-bit field ends a run.
    """
    segments: list[tuple[str, Any]] = []
    slots: list[tuple[str, Any]] | None = None
    bits: list[int] | None = None
    for index, field in enumerate(fields):
        if field.type == "bit":
            if slots is None:
                slots = []
                segments.append(("fixed", slots))
            if bits is None or len(bits) == 8:
                bits = []
                slots.append(("bits", bits))
            bits.append(index)
            continue
        bits = None
        if field.type in _FIXED_FORMATS:
            if slots is None:
                slots = []
                segments.append(("fixed", slots))
            slots.append(("value", index))
        else:
            slots = None
            segments.append((field.type, index))
    return segments


def _slot_format(slot: tuple[str, Any], fields: tuple[Field, ...]) -> str:
    kind, x = slot
    return "B" if kind == "bits" else _FIXED_FORMATS[fields[x].type]


# Decoding: each wire segment becomes a small closure ``step(buf, offset, result)
# -> offset`` that stores its fields into the result; a method's decoder chains
# its steps (unrolled for short chains, so there is no loop per field).


def _decode_steps(fields: tuple[Field, ...]) -> list[Callable[[Any, int, Any], int]]:
    steps = []
    run: list[str | None] = []  # consecutive short strings become one step
    for kind, arg in _plan(fields):
        if kind == "shortstr":
            run.append(None if fields[arg].reserved else fields[arg].name)
            continue
        if run:
            steps.append(_shortstr_step(run))
            run = []
        if kind == "fixed":
            steps.append(_fixed_step(arg, fields))
        else:
            name = None if fields[arg].reserved else fields[arg].name
            steps.append(_call_step(_VARIABLE_DECODERS[kind], name))
    if run:
        steps.append(_shortstr_step(run))
    return steps


def _shortstr_step(names: list[str | None]) -> Callable[[Any, int, Any], int]:
    """One step for a run of short strings (None: a reserved one, read and dropped)."""
    # A string past the end of buf comes out short and leaves the offset beyond
    # len(buf): fields_decoder checks that once, at the end.
    if len(names) == 1 and names[0] is not None:
        name = names[0]

        def step(buf: Any, offset: int, result: Any) -> int:
            end: int = offset + 1 + buf[offset]
            try:
                result[name] = buf[offset + 1 : end].decode()
            except UnicodeDecodeError:
                result[name] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
            return end

        return step

    frozen = tuple(names)

    def step_run(buf: Any, offset: int, result: Any) -> int:
        for name in frozen:
            end = offset + 1 + buf[offset]
            if name is not None:
                try:
                    result[name] = buf[offset + 1 : end].decode()
                except UnicodeDecodeError:
                    result[name] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
            offset = end
        return offset

    return step_run


def _call_step(decode_value: Callable[[Any, int], tuple[Any, int]], name: str | None) -> Callable[[Any, int, Any], int]:
    def step(buf: Any, offset: int, result: Any) -> int:
        result[name], offset = decode_value(buf, offset)
        return offset

    def skip(buf: Any, offset: int, result: Any) -> int:
        return decode_value(buf, offset)[1]

    return skip if name is None else step


def _fixed_step(slots: list[tuple[str, Any]], fields: tuple[Field, ...]) -> Callable[[Any, int, Any], int]:
    st = Struct(">" + "".join(_slot_format(s, fields) for s in slots))
    unpack_from, size = st.unpack_from, st.size
    # (position in the unpacked values, bit number or -1 for a whole value, key)
    picks: list[tuple[int, int, str]] = []
    for position, (kind, x) in enumerate(slots):
        if kind == "bits":
            picks.extend((position, bit, fields[i].name) for bit, i in enumerate(x) if not fields[i].reserved)
        elif not fields[x].reserved:
            picks.append((position, -1, fields[x].name))

    if len(slots) == 1 and size == 1 and len(picks) == 1 and picks[0][1] == -1:
        octet_key = picks[0][2]

        def step_octet(buf: Any, offset: int, result: Any) -> int:
            result[octet_key] = buf[offset]
            return offset + 1

        return step_octet

    if len(picks) == 1 and picks[0][1] == -1:
        key = picks[0][2]
        position = picks[0][0]

        def step_one(buf: Any, offset: int, result: Any) -> int:
            result[key] = unpack_from(buf, offset)[position]
            return offset + size

        return step_one

    if all(bit == -1 for _, bit, _ in picks) and [p for p, _, _ in picks] == list(range(len(slots))):
        keys = tuple(key for _, _, key in picks)

        def step_values(buf: Any, offset: int, result: Any) -> int:
            for key, value in zip(keys, unpack_from(buf, offset)):
                result[key] = value
            return offset + size

        return step_values

    if len(slots) == 2 and len(picks) == 2 and picks[0][:2] == (0, -1) and picks[1][:2] == (1, 0):
        # One value and one flag: basic.deliver, basic.ack, basic.get-ok...
        value_key, flag_key = picks[0][2], picks[1][2]

        def step_value_flag(buf: Any, offset: int, result: Any) -> int:
            value, flags = unpack_from(buf, offset)
            result[value_key] = value
            result[flag_key] = flags & 1 == 1
            return offset + size

        return step_value_flag

    frozen = tuple(picks)

    def step_picks(buf: Any, offset: int, result: Any) -> int:
        values = unpack_from(buf, offset)
        for position, bit, key in frozen:
            result[key] = values[position] if bit < 0 else bool(values[position] >> bit & 1)
        return offset + size

    return step_picks


_OVERRUN = "a string runs past the end of the data"


def _fixed_picks(slots: list[tuple[str, Any]], fields: tuple[Field, ...]) -> list[tuple[int, int, str]]:
    """(position in the unpacked values, bit number or -1 for a whole value, key) per kept field."""
    picks: list[tuple[int, int, str]] = []
    for position, (kind, x) in enumerate(slots):
        if kind == "bits":
            picks.extend((position, bit, fields[i].name) for bit, i in enumerate(x) if not fields[i].reserved)
        elif not fields[x].reserved:
            picks.append((position, -1, fields[x].name))
    return picks


# How a template stores a fixed group's values.
_PICK_ONE, _PICK_VALUE_FLAG, _PICK_VALUES, _PICK_ANY, _PICK_OCTET = 1, 2, 3, 4, 5


def _pick_mode(slots: list[tuple[str, Any]], picks: list[tuple[int, int, str]]) -> int:
    if picks and all(bit == -1 for _, bit, _ in picks) and [p for p, _, _ in picks] == list(range(len(slots))):
        return _PICK_ONE if len(picks) == 1 else _PICK_VALUES
    if len(slots) == 2 and len(picks) == 2 and picks[0][:2] == (0, -1) and picks[1][:2] == (1, 0):
        return _PICK_VALUE_FLAG
    return _PICK_ANY


def template_decoder(
    fields: tuple[Field, ...], make: Callable[[], Any]
) -> Callable[[Any, int], tuple[Any, int]] | None:
    """The one-closure decoder of a ``strings, [table], [fixed group], strings, [fixed group]`` layout.

    None for any other layout (or reserved strings or tables).  The first
    fixed group is read together with the length octet of the string after
    it: basic.deliver is one string, one ``>QBB`` unpack and two strings.
    """
    lead: list[str] = []
    trail: list[str] = []
    table_key: str | None = None
    fixed: list[tuple[str, Any]] | None = None
    post: list[tuple[str, Any]] | None = None
    stage = 0  # 0: leading strings, 1: after the table, 2: after the fixed group, 3: after the last group
    for kind, arg in _plan(fields):
        if kind == "fixed":
            if stage < 2:
                fixed, stage = arg, 2
            elif stage == 2:
                post, stage = arg, 3
            else:
                return None
            continue
        field = fields[arg]
        if field.reserved:
            return None
        if kind == "shortstr" and stage in (0, 2):
            (lead if stage == 0 else trail).append(field.name)
        elif kind == "table" and stage == 0:
            table_key, stage = field.name, 1
        else:
            return None
    if fixed is None and table_key is None and len(lead) < 2:
        return None  # nothing to gain over the generic steps

    fixed_size = 0
    unpack_fixed: Any = None
    picks: list[tuple[int, int, str]] = []
    mode = 0
    if fixed is not None:
        fmt = "".join(_slot_format(s, fields) for s in fixed)
        picks = _fixed_picks(fixed, fields)
        mode = _pick_mode(fixed, picks)
        st = Struct(">" + fmt + ("B" if trail else ""))
        unpack_fixed, fixed_size = st.unpack_from, st.size
        if mode == _PICK_ONE and fmt == "B" and not trail:
            mode = _PICK_OCTET  # a lone octet: read it by index
    post_size = 0
    unpack_post: Any = None
    post_keys: tuple[str, ...] = ()
    if post is not None:
        post_picks = _fixed_picks(post, fields)
        if _pick_mode(post, post_picks) not in (_PICK_ONE, _PICK_VALUES):
            return None
        post_keys = tuple(key for _, _, key in post_picks)
        st = Struct(">" + "".join(_slot_format(s, fields) for s in post))
        unpack_post, post_size = st.unpack_from, st.size
    n_lead, n_trail = len(lead), len(trail)
    l0 = lead[0] if lead else ""
    more_lead = tuple(lead[1:])
    t0 = trail[0] if trail else ""
    t1 = trail[1] if n_trail > 1 else ""
    more_trail = tuple(trail[2:])
    k0 = picks[0][2] if picks else ""
    k1 = picks[1][2] if len(picks) > 1 else ""
    value_keys = tuple(key for _, _, key in picks)
    frozen_picks = tuple(picks)
    decode_table_value = decode_table_raw
    has_table = table_key is not None

    # Two shapes are common enough to get closures without the branches of the
    # general one below: one string, a value and a flag, two strings (basic.deliver);
    # a string or none, a table, an octet or none (content_type, headers, delivery_mode).
    if n_lead == 1 and not has_table and mode == _PICK_VALUE_FLAG and n_trail == 2 and not post_size:

        def decode_string_value_flag_strings(buf: Any, offset: int) -> tuple[Any, int]:
            r = make()
            end = offset + 1 + buf[offset]
            try:
                r[l0] = buf[offset + 1 : end].decode()
            except UnicodeDecodeError:
                r[l0] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
            value, flags, n = unpack_fixed(buf, end)
            r[k0] = value
            r[k1] = flags & 1 == 1
            offset = end + fixed_size
            end = offset + n
            try:
                r[t0] = buf[offset:end].decode()
            except UnicodeDecodeError:
                r[t0] = buf[offset:end].decode("utf-8", "surrogateescape")
            offset = end + 1 + buf[end]
            try:
                r[t1] = buf[end + 1 : offset].decode()
            except UnicodeDecodeError:
                r[t1] = buf[end + 1 : offset].decode("utf-8", "surrogateescape")
            if offset > len(buf):
                raise DecodeError(_OVERRUN)
            return r, offset

        return decode_string_value_flag_strings

    if n_lead <= 1 and has_table and mode in (0, _PICK_OCTET) and not n_trail:
        return table_decoder(l0 if n_lead else None, table_key, k0 if mode else None, make)

    def decode(buf: Any, offset: int) -> tuple[Any, int]:
        r = make()
        if n_lead:
            end = offset + 1 + buf[offset]
            try:
                r[l0] = buf[offset + 1 : end].decode()
            except UnicodeDecodeError:
                r[l0] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
            offset = end
            if more_lead:
                for key in more_lead:
                    end = offset + 1 + buf[offset]
                    try:
                        r[key] = buf[offset + 1 : end].decode()
                    except UnicodeDecodeError:
                        r[key] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
                    offset = end
        if has_table:
            r[table_key], offset = decode_table_value(buf, offset)
        if fixed_size:
            if mode == 2:
                if n_trail:
                    # The first trailing string's length is read with the group.
                    value, flags, n = unpack_fixed(buf, offset)
                    offset += fixed_size
                    r[k0] = value
                    r[k1] = flags & 1 == 1
                    end = offset + n
                    try:
                        r[t0] = buf[offset:end].decode()
                    except UnicodeDecodeError:
                        r[t0] = buf[offset:end].decode("utf-8", "surrogateescape")
                    offset = end
                else:
                    value, flags = unpack_fixed(buf, offset)
                    offset += fixed_size
                    r[k0] = value
                    r[k1] = flags & 1 == 1
            elif mode == 5:
                r[k0] = buf[offset]
                offset += 1
            elif mode == 1:
                if n_trail:
                    value, n = unpack_fixed(buf, offset)
                    offset += fixed_size
                    r[k0] = value
                    end = offset + n
                    try:
                        r[t0] = buf[offset:end].decode()
                    except UnicodeDecodeError:
                        r[t0] = buf[offset:end].decode("utf-8", "surrogateescape")
                    offset = end
                else:
                    r[k0] = unpack_fixed(buf, offset)[0]
                    offset += fixed_size
            else:
                values = unpack_fixed(buf, offset)
                offset += fixed_size
                if mode == 3:
                    for key, value in zip(value_keys, values):
                        r[key] = value
                else:
                    for position, bit, key in frozen_picks:
                        r[key] = values[position] if bit < 0 else bool(values[position] >> bit & 1)
                if n_trail:
                    end = offset + values[-1]
                    try:
                        r[t0] = buf[offset:end].decode()
                    except UnicodeDecodeError:
                        r[t0] = buf[offset:end].decode("utf-8", "surrogateescape")
                    offset = end
            if n_trail > 1:
                end = offset + 1 + buf[offset]
                try:
                    r[t1] = buf[offset + 1 : end].decode()
                except UnicodeDecodeError:
                    r[t1] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
                offset = end
                if more_trail:
                    for key in more_trail:
                        end = offset + 1 + buf[offset]
                        try:
                            r[key] = buf[offset + 1 : end].decode()
                        except UnicodeDecodeError:
                            r[key] = buf[offset + 1 : end].decode("utf-8", "surrogateescape")
                        offset = end
            if post_size:
                values = unpack_post(buf, offset)
                offset += post_size
                for key, value in zip(post_keys, values):
                    r[key] = value
        if offset > len(buf):
            raise DecodeError(_OVERRUN)
        return r, offset

    return decode


def fields_decoder(
    fields: tuple[Field, ...], make: Callable[[], Any], template: bool = True
) -> Callable[[Any, int], tuple[Any, int]]:
    """A closure ``decode(buf, offset) -> (result, offset)``; ``make()`` gives the empty result.

    Reserved fields are read but not kept.  Overruns raise DecodeError,
    IndexError or struct.error; :mod:`puka.spec` turns all into DecodeError.
    The layout's template (:func:`template_decoder`) when it has one, unless
    ``template`` is False: then the generic chain of steps, one per segment.
    """
    if template:
        decoder = template_decoder(fields, make)
        if decoder is not None:
            return decoder
    steps = _decode_steps(fields)
    n = len(steps)

    if n == 0:

        def decode0(buf: Any, offset: int) -> tuple[Any, int]:
            return make(), offset

        return decode0
    if n == 1:
        (s0,) = steps

        def decode1(buf: Any, offset: int) -> tuple[Any, int]:
            result = make()
            offset = s0(buf, offset, result)
            if offset > len(buf):
                raise DecodeError(_OVERRUN)
            return result, offset

        return decode1
    if n == 2:
        s0, s1 = steps

        def decode2(buf: Any, offset: int) -> tuple[Any, int]:
            result = make()
            offset = s1(buf, s0(buf, offset, result), result)
            if offset > len(buf):
                raise DecodeError(_OVERRUN)
            return result, offset

        return decode2
    if n == 3:
        s0, s1, s2 = steps

        def decode3(buf: Any, offset: int) -> tuple[Any, int]:
            r = make()
            offset = s2(buf, s1(buf, s0(buf, offset, r), r), r)
            if offset > len(buf):
                raise DecodeError(_OVERRUN)
            return r, offset

        return decode3
    if n == 4:
        s0, s1, s2, s3 = steps

        def decode4(buf: Any, offset: int) -> tuple[Any, int]:
            r = make()
            offset = s3(buf, s2(buf, s1(buf, s0(buf, offset, r), r), r), r)
            if offset > len(buf):
                raise DecodeError(_OVERRUN)
            return r, offset

        return decode4

    frozen = tuple(steps)

    def decode(buf: Any, offset: int) -> tuple[Any, int]:
        result = make()
        for step in frozen:
            offset = step(buf, offset, result)
        if offset > len(buf):
            raise DecodeError(_OVERRUN)
        return result, offset

    return decode


def method_decoder(fields: tuple[Field, ...], cls: type) -> Callable[[Any, int], tuple[Any, int]]:
    """A closure ``decode(buf, offset) -> (instance of cls, offset)`` for the arguments."""
    return fields_decoder(fields, cls)


def field_keys(fields: tuple[Field, ...], by_name: bool) -> list[Any]:
    """Each field's key in the values an encoder reads: its name, or its position among the
    non-reserved fields; None for a reserved field (always sent as its default)."""
    keys: list[Any] = []
    n_args = 0
    for field in fields:
        if field.reserved:
            keys.append(None)
        else:
            keys.append(field.name if by_name else n_args)
            n_args += 1
    return keys


def method_encoder(
    method_id: int, fields: tuple[Field, ...], label: str, template: bool = True
) -> Callable[..., bytes]:
    """A closure ``encode_args(*values) -> payload`` taking the non-reserved fields in order.

    Reserved fields are sent as their defaults.  The payload starts with the
    class id and method id.  See :func:`values_encoder` for how it is built.
    """
    keys = field_keys(fields, by_name=False)
    n_args = sum(key is not None for key in keys)
    head = _u32.pack(method_id)
    pieces = _encoder_pieces(head, fields, keys, label)

    def wrong_count(args: tuple[Any, ...]) -> TypeError:
        return TypeError("%s takes %d arguments, %d given" % (label, n_args, len(args)))

    if len(pieces) == 1:
        payload: bytes = pieces[0]

        def encode_const(*args: Any) -> bytes:
            if args:
                raise wrong_count(args)
            return payload

        return encode_const

    generic = _pieces_encoder(pieces)
    encode = template_encoder(head, fields, keys, label, generic) if template else None
    if encode is None and len(pieces) == 2:
        # One piece after the head (basic.ack, basic.qos...): called from here, one call less.
        first: bytes = pieces[0]
        piece = pieces[1]

        def encode_one(*args: Any) -> bytes:
            if len(args) != n_args:
                raise wrong_count(args)
            tail: bytes = piece(args)
            return first + tail

        return encode_one

    encode_values: Callable[[Any], bytes] = encode or generic

    def encode_args(*args: Any) -> bytes:
        if len(args) != n_args:
            raise wrong_count(args)
        return encode_values(args)

    return encode_args


def method_kw_encoder(
    method_id: int, fields: tuple[Field, ...], label: str, template: bool = True
) -> Callable[..., bytes]:
    """A closure ``encode(**fields) -> payload``; missing fields take their defaults.

    The keywords are merged over the defaults (a dict of the non-reserved
    fields): a merged dict longer than the defaults names a field the method
    does not have.  The encoder then reads the fields by name.  When every
    field is given there is nothing to merge: the keywords are read as they are.
    """
    keys = field_keys(fields, by_name=True)
    defaults = {f.name: _DEFAULTS[f.type] for f in fields if not f.reserved}
    n_fields = len(defaults)
    encoder = values_encoder(_u32.pack(method_id), fields, keys, label, template)
    encode_values: Callable[[Any], bytes] = (lambda v: encoder) if isinstance(encoder, bytes) else encoder

    def unknown(kw: dict[str, Any]) -> TypeError:
        return TypeError("%s has no field(s) %s" % (label, ", ".join(sorted(set(kw) - set(defaults)))))

    def encode(**kw: Any) -> bytes:
        if len(kw) == n_fields:
            # Every field given: read them from kw as it is.  A KeyError says a
            # name is not the method's; the merge below then tells which.
            try:
                return encode_values(kw)
            except KeyError:
                pass
        values = {**defaults, **kw}
        if len(values) != n_fields:
            raise unknown(kw)
        return encode_values(values)

    return encode


def values_encoder(head: bytes, fields: tuple[Field, ...], keys: list[Any], label: str, template: bool = True) -> Any:
    """``encode(values) -> head + fields``, reading field ``i`` as ``values[keys[i]]``.

    Constant bytes when every field is reserved.  The layout is planned once:
    each wire segment becomes a piece, constant bytes (merged with their
    neighbours) or a closure ``piece(values) -> bytes``, joined by the generic
    encoder.  A layout of the usual shape -- strings, at most one table, one
    fixed group, strings -- also gets a template encoder that does all of it
    in one closure; on any value it does not take as it is (not a str, out
    of range...), the template hands the values to the generic encoder, which
    encodes them or raises the error that names the field.
    """
    pieces = _encoder_pieces(head, fields, keys, label)
    if len(pieces) == 1:
        constant: bytes = pieces[0]
        return constant
    generic = _pieces_encoder(pieces)
    if not template:
        return generic
    return template_encoder(head, fields, keys, label, generic) or generic


def _encoder_pieces(head: bytes, fields: tuple[Field, ...], keys: list[Any], label: str) -> list[Any]:
    """The head, then per wire segment constant bytes (merged with neighbours) or ``piece(values)``."""
    pieces: list[Any] = [head]
    for kind, arg in _plan(fields):
        if kind == "fixed":
            piece = _fixed_piece(arg, fields, keys, label)
        else:
            enc = _VARIABLE_ENCODERS[kind]("%s %s" % (label, fields[arg].name))
            key = keys[arg]
            piece = enc(_DEFAULTS[kind]) if key is None else _variable_piece(enc, key)
        if isinstance(piece, bytes) and isinstance(pieces[-1], bytes):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return pieces


def _pieces_encoder(pieces: list[Any]) -> Callable[[Any], bytes]:
    head: bytes = pieces[0]
    rest = pieces[1:]
    # Unrolled for the usual shapes: the head constant, then up to three pieces.
    if len(rest) == 1:
        (p1,) = rest

        def encode1(v: Any) -> bytes:
            tail: bytes = p1(v)
            return head + tail

        return encode1
    if len(rest) == 2 and not isinstance(rest[0], bytes) and not isinstance(rest[1], bytes):
        p1, p2 = rest

        def encode2(v: Any) -> bytes:
            return b"".join((head, p1(v), p2(v)))

        return encode2
    if len(rest) == 3 and not any(isinstance(p, bytes) for p in rest):
        p1, p2, p3 = rest

        def encode3(v: Any) -> bytes:
            return b"".join((head, p1(v), p2(v), p3(v)))

        return encode3

    frozen = tuple(pieces)

    def encode_values(v: Any) -> bytes:
        return b"".join([p if p.__class__ is bytes else p(v) for p in frozen])

    return encode_values


def template_encoder(
    head: bytes,
    fields: tuple[Field, ...],
    keys: list[Any],
    label: str,
    generic: Callable[[Any], bytes],
    fixed_alone: bool = False,
) -> Callable[[Any], bytes] | None:
    """The one-closure encoder of a ``strings, [table], [fixed group], strings`` layout, or None.

    A leading fixed group that is all reserved joins the constant head (the
    ticket of basic.publish).  A fixed group alone gets a template only with
    ``fixed_alone`` (property lists: it saves the call of the generic piece).  Strings must be str of at most 255 UTF-8
    bytes; anything else goes to ``generic``.
    """
    plan = _plan(fields)
    if plan and plan[0][0] == "fixed":
        piece = _fixed_piece(plan[0][1], fields, keys, label)
        if isinstance(piece, bytes):
            head += piece
            plan = plan[1:]
    lead: list[Any] = []
    trail: list[Any] = []
    table_key: Any = None
    fixed: Any = None
    fixed_slots: list[tuple[str, Any]] | None = None
    bits: tuple[tuple[int, Any], ...] = ()
    stage = 0  # 0: leading strings, 1: after the table, 2: after the fixed group
    for kind, arg in plan:
        key = None if kind == "fixed" else keys[arg]
        if kind == "shortstr" and key is not None and stage != 1:
            (lead if stage == 0 else trail).append(key)
        elif kind == "table" and key is not None and stage == 0:
            table_key, stage = key, 1
        elif kind == "fixed" and stage < 2:
            fixed, fixed_slots, stage = _fixed_piece(arg, fields, keys, label), arg, 2
            if len(arg) == 1 and arg[0][0] == "bits":
                bits = tuple((1 << bit, keys[i]) for bit, i in enumerate(arg[0][1]) if keys[i] is not None)
        else:
            return None
    if not lead and not trail and table_key is None and not fixed_alone:
        return None  # a fixed group alone: the generic piece is as good
    # The fixed group: constant bytes, a bit octet made here, or a piece closure.
    fixed_const = fixed if isinstance(fixed, bytes) else b""
    octet_key: Any = None  # a fixed group that is one octet argument: its byte is looked up
    if fixed_slots is not None and len(fixed_slots) == 1 and fixed_slots[0][0] == "value":
        index = fixed_slots[0][1]
        if fields[index].type == "octet" and keys[index] is not None:
            octet_key = keys[index]
    fixed_call = fixed if callable(fixed) and not bits else None
    n_lead, n_trail, n_bits = len(lead), len(trail), len(bits)
    l0, l1 = (lead + [None, None])[:2]
    t0, t1 = (trail + [None, None])[:2]
    more_lead, more_trail = tuple(lead[2:]), tuple(trail[2:])
    (m0, b0), (m1, b1) = (list(bits) + [(0, None), (0, None)])[:2]
    more_bits = tuple(bits[2:])
    lengths = SHORT_LEN
    octets = _OCTETS
    encode_table_value = encode_table

    def encode(v: Any) -> bytes:
        try:
            out = head
            if n_lead:
                s = v[l0]
                if s.__class__ is not str:
                    return generic(v)
                raw = s.encode()
                if len(raw) > 255:
                    return generic(v)
                out += lengths[len(raw)] + raw
                if n_lead > 1:
                    s = v[l1]
                    if s.__class__ is not str:
                        return generic(v)
                    raw = s.encode()
                    if len(raw) > 255:
                        return generic(v)
                    out += lengths[len(raw)] + raw
                    if more_lead:
                        for key in more_lead:
                            s = v[key]
                            if s.__class__ is not str:
                                return generic(v)
                            raw = s.encode()
                            if len(raw) > 255:
                                return generic(v)
                            out += lengths[len(raw)] + raw
            if table_key is not None:
                out += encode_table_value(v[table_key])
            if n_bits:
                octet = m0 if v[b0] else 0
                if n_bits > 1:
                    if v[b1]:
                        octet |= m1
                    for mask, key in more_bits:
                        if v[key]:
                            octet |= mask
                out += octets[octet]
            elif octet_key is not None:
                x = v[octet_key]
                if x.__class__ is not int or not 0 <= x <= 255:
                    return generic(v)
                out += octets[x]
            elif fixed_call is not None:
                out += fixed_call(v)
            else:
                out += fixed_const
            if n_trail:
                s = v[t0]
                if s.__class__ is not str:
                    return generic(v)
                raw = s.encode()
                if len(raw) > 255:
                    return generic(v)
                out += lengths[len(raw)] + raw
                if n_trail > 1:
                    s = v[t1]
                    if s.__class__ is not str:
                        return generic(v)
                    raw = s.encode()
                    if len(raw) > 255:
                        return generic(v)
                    out += lengths[len(raw)] + raw
                    if more_trail:
                        for key in more_trail:
                            s = v[key]
                            if s.__class__ is not str:
                                return generic(v)
                            raw = s.encode()
                            if len(raw) > 255:
                                return generic(v)
                            out += lengths[len(raw)] + raw
            return out
        except (TypeError, ValueError, AttributeError, StructError):  # UnicodeEncodeError is a ValueError
            return generic(v)

    return encode


def _variable_piece(enc: Callable[[Any], bytes], key: Any) -> Callable[[Any], bytes]:
    def piece(v: Any) -> bytes:
        return enc(v[key])

    return piece


_OCTETS = [bytes((i,)) for i in range(256)]


def _fixed_piece(slots: list[tuple[str, Any]], fields: tuple[Field, ...], keys: list[Any], label: str) -> Any:
    """Constant bytes, or a closure ``piece(values)`` packing the segment's values and bit octets."""
    st = Struct(">" + "".join(_slot_format(s, fields) for s in slots))
    pack = st.pack
    # Per slot: (kind, x): ("arg", key), ("const", value) or ("bits", ((mask, key), ...))
    recipe: list[tuple[str, Any]] = []
    for kind, x in slots:
        if kind == "bits":
            members = tuple((1 << bit, keys[i]) for bit, i in enumerate(x) if keys[i] is not None)
            recipe.append(("bits", members) if members else ("const", 0))
        elif keys[x] is None:
            recipe.append(("const", _DEFAULTS[fields[x].type]))
        else:
            # A timestamp argument may be a datetime: converted in the general piece below.
            recipe.append(("ts" if fields[x].type == "timestamp" else "arg", keys[x]))
    if all(kind == "const" for kind, _ in recipe):
        return pack(*[x for _, x in recipe])

    def diagnose(v: Any) -> Exception:
        for (kind, x), (_, index) in zip(recipe, slots):
            if kind in ("arg", "ts"):
                wire = fields[index].type
                value = v[x]
                if kind == "ts" and _is_datetime(value):
                    continue
                try:
                    Struct(">" + _FIXED_FORMATS[wire]).pack(value)
                except StructError:
                    return _range_error("%s %s" % (label, fields[index].name), wire, value)
        return ValueError("%s: cannot encode %r" % (label, v))

    if len(recipe) == 1 and recipe[0][0] == "bits":
        members = recipe[0][1]

        def piece_bits(v: Any) -> bytes:
            octet = 0
            for mask, key in members:
                if v[key]:
                    octet |= mask
            return _OCTETS[octet]

        return piece_bits

    if len(recipe) == 1 and recipe[0][0] == "arg":
        key = recipe[0][1]

        def piece_value(v: Any) -> bytes:
            try:
                return pack(v[key])
            except StructError:
                raise diagnose(v) from None

        return piece_value

    if len(recipe) == 2 and recipe[0][0] == "arg" and recipe[1][0] == "bits" and len(recipe[1][1]) == 1:
        key, ((mask, bit_key),) = recipe[0][1], recipe[1][1]

        def piece_value_flag(v: Any) -> bytes:
            try:
                return pack(v[key], mask if v[bit_key] else 0)
            except StructError:
                raise diagnose(v) from None

        return piece_value_flag

    if all(kind == "arg" for kind, _ in recipe):
        arg_keys = tuple(x for _, x in recipe)

        def piece_values(v: Any) -> bytes:
            try:
                return pack(*[v[key] for key in arg_keys])
            except StructError:
                raise diagnose(v) from None

        return piece_values

    frozen = tuple(recipe)

    def piece(v: Any) -> bytes:
        values = []
        for kind, x in frozen:
            if kind == "arg":
                values.append(v[x])
            elif kind == "ts":
                value = v[x]
                values.append(datetime_seconds(value) if _is_datetime(value) else value)
            elif kind == "bits":
                octet = 0
                for mask, key in x:
                    if v[key]:
                        octet |= mask
                values.append(octet)
            else:
                values.append(x)
        try:
            return pack(*values)
        except StructError:
            raise diagnose(v) from None

    return piece


# --- method classes ------------------------------------------------------------------------


class Method(dict):  # type: ignore[type-arg]
    """Base of the generated method classes: a decoded method is the dict of its fields."""

    name: str = ""
    method_id: int = 0
    class_id: int = 0
    index: int = 0
    synchronous: bool = False
    has_content: bool = False
    fields: tuple[Field, ...] = ()
    #: Names of the methods that answer this one (``queue.declare`` -> ``queue.declare-ok``).
    responses: tuple[str, ...] = ()
    is_error = False
    encode_args: Callable[..., bytes]
    decode: Callable[[Any, int], tuple[Any, int]]

    @classmethod
    def encode(cls, **fields: Any) -> bytes:
        """The method payload (class id, method id, arguments); missing fields take defaults."""
        args = []
        for field in cls.fields:
            if field.reserved:
                continue
            value = fields.pop(field.name, _MISSING)
            args.append(_DEFAULTS[field.type] if value is _MISSING else value)
        if fields:
            raise TypeError("%s has no field(s) %s" % (cls.name, ", ".join(sorted(fields))))
        return cls.encode_args(*args)

    def __repr__(self) -> str:
        return "<%s %s>" % (self.name, dict.__repr__(self))


_MISSING = object()


def make_method_class(class_name: str, class_index: int, method: tuple[Any, ...]) -> type[Method]:
    name, index, synchronous, content, responses, raw_fields = method
    fields = tuple(Field(py_name(f[0]), f[1], f[2], f[3]) for f in raw_fields)
    full_name = "%s.%s" % (class_name, name)
    method_id = (class_index << 16) | index
    cls: type[Method] = type(
        camel(full_name),
        (Method,),
        {
            "__module__": "puka.spec",
            "name": full_name,
            "method_id": method_id,
            "class_id": class_index,
            "index": index,
            "synchronous": synchronous,
            "has_content": content,
            "fields": fields,
            "responses": tuple("%s.%s" % (class_name, r) for r in responses),
            "encode": staticmethod(method_kw_encoder(method_id, fields, full_name)),
        },
    )
    cls.encode_args = staticmethod(method_encoder(method_id, fields, full_name))
    cls.decode = staticmethod(method_decoder(fields, cls))
    return cls


# --- content properties --------------------------------------------------------------------


class PropertiesCodec:
    """Encoder and decoder of one content class's property list (flag words + values)."""

    def __init__(self, class_id: int, properties: tuple[tuple[str, str], ...]) -> None:
        self.class_id = class_id
        self.names = tuple(PROPERTY_RENAMES.get(py_name(n), py_name(n)) for n, _ in properties)
        self.types = tuple(wire for _, wire in properties)
        # name -> (position, flag bit as a big int over all words, encoder)
        self._encoders: dict[str, tuple[int, int, Callable[[Any], bytes]]] = {}
        for position, (name, wire) in enumerate(zip(self.names, self.types)):
            enc = value_encoder(wire, "property %s" % name)
            self._encoders[name] = (position, _flag_bit(position), enc)
        self._plans: dict[int, Callable[[Any, int], tuple[dict[str, Any], int]]] = {}
        self.encode = self._make_encoder()
        self.decode = self._make_decoder()
        self.decode_header = self._make_header_decoder()

    def _make_encoder(self) -> Callable[[dict[str, Any]], bytes]:
        table = self._encoders
        pack_flags = _u16.pack
        single_word = len(self.names) <= 15
        blank = [b""] * (len(self.names) + 1)  # [flag words] + one slot per property

        def encode_any(props: dict[str, Any]) -> bytes:
            """Encode a property list (flag words + values) from a dict, key by key."""
            if not props:
                return b"\x00\x00"
            flags = 0
            pieces = blank[:]
            for key, value in props.items():
                entry = table.get(key)
                if entry is None:
                    raise ValueError("unknown property %r" % (key,))
                position, bit, enc = entry
                flags |= bit
                pieces[position + 1] = enc(value)
            pieces[0] = pack_flags(flags) if single_word else _flag_words(flags)
            return b"".join(pieces)

        # One encoder per tuple of keys, as the dicts spell them: the flag words
        # are precomputed and the values go through a template (encode_any when
        # the set of properties has no template shape, or a value is unusual).
        plans: dict[tuple[str, ...], Callable[[Any], bytes]] = {}
        types = dict(zip(self.names, self.types))
        positions = {name: position for position, name in enumerate(self.names)}

        def plan_for(keys: tuple[str, ...]) -> Callable[[Any], bytes]:
            if not keys:
                return lambda props: b"\x00\x00"
            for name in keys:
                if name not in positions:
                    raise ValueError("unknown property %r" % (name,))
            present = sorted(keys, key=positions.__getitem__)
            flags = 0
            for name in present:
                flags |= table[name][1]
            head = pack_flags(flags) if single_word else _flag_words(flags)
            fields = tuple(Field(name, types[name], False, types[name]) for name in present)
            plan = template_encoder(head, fields, list(present), "property", encode_any, True) or encode_any
            if len(plans) >= 512:
                plans.clear()
            plans[keys] = plan
            return plan

        def encode(props: dict[str, Any]) -> bytes:
            """Encode a property list (flag words + values) from a dict."""
            keys = tuple(props)
            plan = plans.get(keys) or plan_for(keys)
            return plan(props)

        return encode

    def _make_decoder(self) -> Callable[[Any, int], tuple[dict[str, Any], int]]:
        plans = self._plans
        plan_for = self._plan_for
        more_flags = self._more_flags
        unpack_flags = _u16.unpack_from

        def decode(buf: Any, offset: int) -> tuple[dict[str, Any], int]:
            """Decode a property list (flag words + values) at ``offset``."""
            flags = unpack_flags(buf, offset)[0]
            offset += 2
            if flags & 1:
                flags, offset = more_flags(flags, buf, offset)
            decoder = plans.get(flags) or plan_for(flags)
            return decoder(buf, offset)

        return decode

    def _make_header_decoder(self) -> Callable[[Any], tuple[int, dict[str, Any]]]:
        plans = self._plans
        plan_for = self._plan_for
        more_flags = self._more_flags
        unpack = Struct(">HHQH").unpack_from
        class_id = self.class_id

        def decode_header(buf: Any) -> tuple[int, dict[str, Any]]:
            """Decode a whole content header payload: returns (body_size, properties).

            The payload must be entirely consumed; its class must be this codec's.
            """
            try:
                cid, _weight, body_size, flags = unpack(buf, 0)
                if cid != class_id:
                    raise DecodeError("content header of class %d on a class %d method" % (cid, class_id))
                offset = 14
                if flags & 1:
                    flags, offset = more_flags(flags, buf, offset)
                props, offset = (plans.get(flags) or plan_for(flags))(buf, offset)
            except DecodeError:
                raise
            except DECODE_FAILURES as exc:
                raise DecodeError("malformed content header: %s" % describe_failure(exc)) from None
            if offset != len(buf):
                raise DecodeError("content header has %d bytes after its properties" % (len(buf) - offset))
            return body_size, props

        return decode_header

    @staticmethod
    def _more_flags(flags: int, buf: Any, offset: int) -> tuple[int, int]:
        flags &= 0xFFFE
        shift = 16
        while True:
            (word,) = _u16.unpack_from(buf, offset)
            offset += 2
            flags |= (word & 0xFFFE) << shift
            if not word & 1:
                return flags, offset
            shift += 16

    def _plan_for(self, flags: int) -> Callable[[Any, int], tuple[dict[str, Any], int]]:
        """A decoder for the properties a flags value says are present (cached)."""
        present = []
        remaining = flags
        for position, (name, wire) in enumerate(zip(self.names, self.types)):
            bit = _flag_bit(position)
            if flags & bit:
                present.append(Field(name, wire, False, wire))
                remaining &= ~bit
        if remaining:
            raise DecodeError("content header sets flags of unknown properties (%#x)" % remaining)
        decoder = fields_decoder(tuple(present), dict)
        if len(self._plans) < 1024:
            self._plans[flags] = decoder
        return decoder


def properties_decoder(codecs: dict[int, PropertiesCodec]) -> Callable[..., tuple[dict[str, Any], int]]:
    """The public ``decode_properties(buf, offset=0, class_id=60)`` over the content classes' codecs.

    It reads the flag word itself and calls the decoder planned for it and
    the class (one dict lookup, one call); several flag words and plans not
    seen yet take the slower way through the class's codec.  Malformed input
    of any kind comes out as DecodeError.
    """
    plans: dict[int, Callable[[Any, int], tuple[dict[str, Any], int]]] = {}
    more_flags = PropertiesCodec._more_flags
    unpack_flags = _u16.unpack_from

    def first_use(buf: Any, offset: int, class_id: int) -> tuple[dict[str, Any], int]:
        codec = codecs.get(class_id)
        if codec is None:
            raise DecodeError("class %d has no content properties" % class_id)
        flags = unpack_flags(buf, offset)[0]
        if flags & 1:
            flags, offset = more_flags(flags, buf, offset + 2)
            return (codec._plans.get(flags) or codec._plan_for(flags))(buf, offset)
        plan = codec._plans.get(flags) or codec._plan_for(flags)
        if len(plans) < 1024:
            plans[flags << 16 | class_id] = plan
        return plan(buf, offset + 2)

    def decode_properties(buf: Any, offset: int = 0, class_id: int = 60) -> tuple[dict[str, Any], int]:
        """Decode a property list (flag words + values) at ``offset``."""
        if buf.__class__ is memoryview:
            buf = buf.tobytes()
        try:
            plan = plans.get(unpack_flags(buf, offset)[0] << 16 | class_id)
            if plan is None:
                return first_use(buf, offset, class_id)
            return plan(buf, offset + 2)
        except DecodeError:
            raise
        except DECODE_FAILURES as exc:
            raise DecodeError("malformed content properties: %s" % describe_failure(exc)) from None

    return decode_properties


def method_decoder_public(methods: dict[int, type[Method]]) -> Callable[..., tuple[Method, int]]:
    """The public ``decode_method(buf, offset=0)``: the method id, then that method's decoder."""
    decoders = {method_id: cls.decode for method_id, cls in methods.items()}
    unpack_id = _u32.unpack_from

    def decode_method(buf: Any, offset: int = 0) -> tuple[Method, int]:
        """Decode a method payload (class id, method id, arguments) at ``offset``."""
        if buf.__class__ is memoryview:
            buf = buf.tobytes()
        try:
            decode = decoders.get(unpack_id(buf, offset)[0])
            if decode is None:
                method_id = unpack_id(buf, offset)[0]
                raise DecodeError("unknown method %d.%d" % (method_id >> 16, method_id & 0xFFFF))
            result: tuple[Method, int] = decode(buf, offset + 4)
            return result
        except DecodeError:
            raise
        except DECODE_FAILURES as exc:
            raise DecodeError("malformed method arguments: %s" % describe_failure(exc)) from None

    return decode_method


def _flag_bit(position: int) -> int:
    word, place = divmod(position, 15)
    return 1 << (word * 16 + 15 - place)


def _flag_words(flags: int) -> bytes:
    words = []
    while True:
        word = flags & 0xFFFE
        flags >>= 16
        if flags:
            words.append(_u16.pack(word | 1))
        else:
            words.append(_u16.pack(word))
            return b"".join(words)


# --- exceptions ----------------------------------------------------------------------------


def make_error_class(name: str, code: int, severity: str) -> type[exceptions.AMQPError]:
    base = exceptions.AMQPSoftError if severity == "soft-error" else exceptions.AMQPHardError
    class_name = ERROR_RENAMES.get(name) or camel(name)
    cls = type(class_name, (base,), {"reply_code": code, "__module__": "puka.spec"})
    cls.__doc__ = "AMQP reply code %d %s (%s)." % (
        code,
        name.replace("-", "_").upper(),
        "channel error" if base is exceptions.AMQPSoftError else "connection error",
    )
    return cls


# --- the whole namespace -------------------------------------------------------------------


def build(model: dict[str, Any]) -> dict[str, Any]:
    """Run the factories over the model; returns the names :mod:`puka.spec` exports."""
    methods: dict[int, type[Method]] = {}
    by_name: dict[str, type[Method]] = {}
    properties: dict[int, PropertiesCodec] = {}
    class_ids: dict[str, int] = {}
    for class_name, class_index, props, class_methods in model["classes"]:
        class_ids[class_name] = class_index
        if props:
            properties[class_index] = PropertiesCodec(class_index, props)
        for method in class_methods:
            cls = make_method_class(class_name, class_index, method)
            methods[cls.method_id] = cls
            by_name[cls.name] = cls

    constants: dict[str, int] = {}
    errors: dict[int, type[exceptions.AMQPError]] = {}
    error_classes: dict[str, type[exceptions.AMQPError]] = {}
    for name, value, severity in model["constants"]:
        constants[py_name(name).upper()] = value
        if severity in ("soft-error", "hard-error"):
            err = make_error_class(name, value, severity)
            errors[value] = err
            error_classes[err.__name__] = err

    return {
        "METHODS": methods,
        "METHODS_BY_NAME": by_name,
        "PROPERTIES": properties,
        "CLASS_IDS": class_ids,
        "CONSTANTS": constants,
        "ERRORS": errors,
        "ERROR_CLASSES": error_classes,
    }
