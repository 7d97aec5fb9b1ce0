"""Closure factories: the model -> method classes, codecs and exceptions.

Theory of operation: nothing here knows any particular AMQP method.  Given a
method's field list, :func:`method_codec` plans its wire layout once --
consecutive fixed-width fields and packed bit octets merge into one
precompiled ``struct.Struct``; reserved fields fold into constants;
short strings, long strings and tables become small steps -- and returns an
encoder and a decoder that are closures over that plan.  :func:`build` runs
the factories over the whole model and returns the namespace that
:mod:`puka.spec` exports: method classes keyed by method id, the property
codecs of content classes, and one exception class per error constant.

A method class is a ``dict`` subclass: a decoded method *is* the dict of its
fields (``result['routing_key']``), with class attributes describing it
(``name``, ``method_id``, ``class_id``, ``synchronous``, ``has_content``,
``fields``...).  Encoding never needs an instance: ``encode(**fields)`` and the
positional ``encode_args(*values)`` return the method payload (class id,
method id, arguments) ready for a method frame.
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


def fields_decoder(fields: tuple[Field, ...], make: Callable[[], Any]) -> Callable[[Any, int], tuple[Any, int]]:
    """A closure ``decode(buf, offset) -> (result, offset)``; ``make()`` gives the empty result.

    Reserved fields are read but not kept.  Overruns raise DecodeError,
    IndexError or struct.error; :mod:`puka.spec` turns all into DecodeError.
    """
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


def method_encoder(method_id: int, fields: tuple[Field, ...], label: str) -> Callable[..., bytes]:
    """A closure ``encode_args(*values) -> payload`` taking the non-reserved fields in order.

    Reserved fields are sent as their defaults.  The payload starts with the
    class id and method id.  Each wire segment becomes a piece: constant bytes
    (merged with their neighbours) or a closure ``piece(args) -> bytes``.
    """
    # Each field's position among the caller's arguments (None: reserved).
    positions: list[int | None] = []
    n_args = 0
    for field in fields:
        positions.append(None if field.reserved else n_args)
        n_args += not field.reserved

    pieces: list[Any] = [_u32.pack(method_id)]
    for kind, arg in _plan(fields):
        if kind == "fixed":
            piece = _fixed_piece(arg, fields, positions, label)
        else:
            enc = _VARIABLE_ENCODERS[kind]("%s %s" % (label, fields[arg].name))
            pos = positions[arg]
            piece = enc(_DEFAULTS[kind]) if pos is None else _variable_piece(enc, pos)
        if isinstance(piece, bytes) and isinstance(pieces[-1], bytes):
            pieces[-1] += piece
        else:
            pieces.append(piece)

    def wrong_count(args: tuple[Any, ...]) -> TypeError:
        return TypeError("%s takes %d arguments, %d given" % (label, n_args, len(args)))

    head: bytes = pieces[0]
    rest = pieces[1:]
    if not rest:

        def encode_const(*args: Any) -> bytes:
            if args:
                raise wrong_count(args)
            return head

        return encode_const
    # Unrolled for the usual shapes: the head constant, then up to three pieces
    # that alternate between callables and constants.
    if len(rest) == 1:
        (p1,) = rest

        def encode1(*args: Any) -> bytes:
            if len(args) != n_args:
                raise wrong_count(args)
            tail: bytes = p1(args)
            return head + tail

        return encode1
    if len(rest) == 2 and not isinstance(rest[0], bytes) and not isinstance(rest[1], bytes):
        p1, p2 = rest

        def encode2(*args: Any) -> bytes:
            if len(args) != n_args:
                raise wrong_count(args)
            return b"".join((head, p1(args), p2(args)))

        return encode2
    if len(rest) == 3 and not any(isinstance(p, bytes) for p in rest):
        p1, p2, p3 = rest

        def encode3(*args: Any) -> bytes:
            if len(args) != n_args:
                raise wrong_count(args)
            return b"".join((head, p1(args), p2(args), p3(args)))

        return encode3

    frozen = tuple(pieces)

    def encode_args(*args: Any) -> bytes:
        if len(args) != n_args:
            raise wrong_count(args)
        return b"".join([p if p.__class__ is bytes else p(args) for p in frozen])

    return encode_args


def _variable_piece(enc: Callable[[Any], bytes], pos: int) -> Callable[[tuple[Any, ...]], bytes]:
    def piece(args: tuple[Any, ...]) -> bytes:
        return enc(args[pos])

    return piece


_OCTETS = [bytes((i,)) for i in range(256)]


def _fixed_piece(
    slots: list[tuple[str, Any]], fields: tuple[Field, ...], positions: list[int | None], label: str
) -> Any:
    """Constant bytes, or a closure packing the segment's values and bit octets."""
    st = Struct(">" + "".join(_slot_format(s, fields) for s in slots))
    pack = st.pack
    # Per slot: (kind, x): ("arg", position), ("const", value) or ("bits", ((mask, position), ...))
    recipe: list[tuple[str, Any]] = []
    for kind, x in slots:
        if kind == "bits":
            members = tuple((1 << bit, positions[i]) for bit, i in enumerate(x) if positions[i] is not None)
            recipe.append(("bits", members) if members else ("const", 0))
        elif positions[x] is None:
            recipe.append(("const", _DEFAULTS[fields[x].type]))
        else:
            # A timestamp argument may be a datetime: converted in the general piece below.
            recipe.append(("ts" if fields[x].type == "timestamp" else "arg", positions[x]))
    if all(kind == "const" for kind, _ in recipe):
        return pack(*[x for _, x in recipe])

    def diagnose(args: tuple[Any, ...]) -> Exception:
        for (kind, x), (_, index) in zip(recipe, slots):
            if kind in ("arg", "ts"):
                wire = fields[index].type
                value = args[x]
                if kind == "ts" and _is_datetime(value):
                    continue
                try:
                    Struct(">" + _FIXED_FORMATS[wire]).pack(value)
                except StructError:
                    return _range_error("%s %s" % (label, fields[index].name), wire, value)
        return ValueError("%s: cannot encode %r" % (label, args))

    if len(recipe) == 1 and recipe[0][0] == "bits":
        members = recipe[0][1]

        def piece_bits(args: tuple[Any, ...]) -> bytes:
            octet = 0
            for mask, pos in members:
                if args[pos]:
                    octet |= mask
            return _OCTETS[octet]

        return piece_bits

    if len(recipe) == 2 and recipe[0][0] == "arg" and recipe[1][0] == "bits" and len(recipe[1][1]) == 1:
        pos, ((mask, bit_pos),) = recipe[0][1], recipe[1][1]

        def piece_value_flag(args: tuple[Any, ...]) -> bytes:
            try:
                return pack(args[pos], mask if args[bit_pos] else 0)
            except StructError:
                raise diagnose(args) from None

        return piece_value_flag

    frozen = tuple(recipe)

    def piece(args: tuple[Any, ...]) -> bytes:
        values = []
        for kind, x in frozen:
            if kind == "arg":
                values.append(args[x])
            elif kind == "ts":
                value = args[x]
                values.append(datetime_seconds(value) if _is_datetime(value) else value)
            elif kind == "bits":
                octet = 0
                for mask, pos in x:
                    if args[pos]:
                        octet |= mask
                values.append(octet)
            else:
                values.append(x)
        try:
            return pack(*values)
        except StructError:
            raise diagnose(args) from None

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

        def encode(props: dict[str, Any]) -> bytes:
            """Encode a property list (flag words + values) from a dict."""
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
