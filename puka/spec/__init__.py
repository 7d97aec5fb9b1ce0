"""AMQP 0-9-1 as data: method classes, codecs and exceptions built from the XML.

Theory of operation: at import, :mod:`puka.spec.codegen` looks for the
generated module whose key matches the XML inputs (beside the package, then in
the user's cache); when there is none, :mod:`puka.spec.model` parses the XML
with lxml and the result is written for next time.  Either way the model --
plain literals -- goes through the closure factories of
:mod:`puka.spec.codecs`, and the resulting names are exported here:

``METHODS``
    method id (``class_id << 16 | index``) -> method class.  A class has
    ``name`` (``"basic.deliver"``), ``method_id``, ``class_id``,
    ``synchronous``, ``has_content``, ``fields`` and ``encode(**fields)``
    (the method payload); an instance is the decoded dict of its fields.
``decode_method(buf, offset) -> (method, offset)``
    decode a method payload (class id, method id, arguments).
``encode_properties(class_id, props) -> bytes`` / ``decode_properties(buf, offset, class_id=60)``
    a content class's property list (flag words + values).
``encode_table(d) -> bytes`` / ``decode_table(buf, offset) -> (d, offset)``
    AMQP field tables, as RabbitMQ speaks them.
``DecodeError``
    a ``ValueError``, the only exception malformed input raises.
``GENERATED``
    path of the generated module in use, or None when it lives in memory only.

One exception class per reply code (``NotFound``, ``NoRoute``...) and
``ERRORS`` (reply code -> class) complete it.
"""

from __future__ import annotations

from . import codegen as _codegen
from .codecs import Field, Method, PropertiesCodec
from .codecs import method_decoder_public as _method_decoder_public
from .codecs import properties_decoder as _properties_decoder
from .tables import DECODE_FAILURES, DecodeError, decode_table_raw, describe_failure, encode_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load() -> tuple[dict[str, Any], str | None]:
    key = _codegen.inputs_key()
    paths = _codegen.candidate_paths(key)
    for path in paths:
        module = _codegen.load(path, key)
        if module is not None:
            try:
                return module.build(), path
            except Exception:
                pass  # corrupt in a way the checks missed: regenerate below
    model, source = _codegen.generate()
    for path in paths:
        if _codegen.write(path, source) and _codegen.load(path, key) is not None:
            return _codecs_build(model), path
    return _codecs_build(model), None


def _codecs_build(model: dict[str, Any]) -> dict[str, Any]:
    from .codecs import build

    return build(model)


_namespace, GENERATED = _load()

METHODS: dict[int, type[Method]] = _namespace["METHODS"]
METHODS_BY_NAME: dict[str, type[Method]] = _namespace["METHODS_BY_NAME"]
PROPERTIES: dict[int, PropertiesCodec] = _namespace["PROPERTIES"]
CLASS_IDS: dict[str, int] = _namespace["CLASS_IDS"]
CONSTANTS: dict[str, int] = _namespace["CONSTANTS"]
ERRORS: dict[int, type[Exception]] = _namespace["ERRORS"]
globals().update(_namespace["ERROR_CLASSES"])
del _namespace

FRAME_METHOD = CONSTANTS["FRAME_METHOD"]
FRAME_HEADER = CONSTANTS["FRAME_HEADER"]
FRAME_BODY = CONSTANTS["FRAME_BODY"]
FRAME_HEARTBEAT = CONSTANTS["FRAME_HEARTBEAT"]
FRAME_END = CONSTANTS["FRAME_END"]
FRAME_MIN_SIZE = CONSTANTS["FRAME_MIN_SIZE"]
#: The protocol header a client sends first.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

decode_method = _method_decoder_public(METHODS)


def encode_properties(class_id: int, props: dict[str, Any]) -> bytes:
    """Encode a content class's properties (flag words + values)."""
    codec = PROPERTIES.get(class_id)
    if codec is None:
        raise ValueError("class %d has no content properties" % class_id)
    return codec.encode(props)


decode_properties = _properties_decoder(PROPERTIES)


def decode_table(buf: Any, offset: int = 0) -> tuple[dict[str, Any], int]:
    """Decode a field table at ``offset``."""
    if buf.__class__ is memoryview:
        buf = buf.tobytes()
    try:
        return decode_table_raw(buf, offset)
    except DecodeError:
        raise
    except DECODE_FAILURES as exc:
        raise DecodeError("malformed field table: %s" % describe_failure(exc)) from None


def error_for(reply_code: int) -> type[Exception]:
    """The exception class for a reply code (``AMQPError`` when unknown)."""
    from ..exceptions import AMQPError

    return ERRORS.get(reply_code, AMQPError)


__all__ = [
    "METHODS",
    "METHODS_BY_NAME",
    "PROPERTIES",
    "CLASS_IDS",
    "CONSTANTS",
    "ERRORS",
    "GENERATED",
    "DecodeError",
    "Field",
    "Method",
    "decode_method",
    "encode_properties",
    "decode_properties",
    "encode_table",
    "decode_table",
    "error_for",
]
