"""The AMQP specification XML -> a small model made of plain Python literals.

Theory of operation: :func:`parse` reads the vendored RabbitMQ XML and puka's
overlay with lxml, merges them (see the overlay's header for the rules),
resolves every field's domain to its wire type, and returns a model built only
of tuples, strings, ints and bools.  Plain literals are what make the model
cacheable: :mod:`puka.spec.codegen` writes it out with ``repr`` and a later
import reads it back without touching the XML or lxml.

The model::

    {"constants": ((name, value, error_class), ...),   # error_class '' when none
     "classes": ((name, index,
                  ((prop_name, type), ...),              # content properties
                  ((name, index, synchronous, content, (response, ...),
                    ((field_name, type, reserved, domain), ...)), ...)), ...)}

Names are kept as the XML spells them (``routing-key``); the codecs turn them
into Python identifiers.  This module is the only user of lxml, and it is
imported only when the generated module is missing or stale.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Model = dict[str, Any]

SPEC_DIR = os.path.dirname(os.path.abspath(__file__))
#: The XML inputs, in merge order: the vendored specification, then the overlay.
SPEC_FILES = ("amqp0-9-1.stripped.extended.xml", "puka-overlay.xml")

WIRE_TYPES = frozenset(["bit", "octet", "short", "long", "longlong", "shortstr", "longstr", "timestamp", "table"])


def spec_paths() -> list[str]:
    return [os.path.join(SPEC_DIR, name) for name in SPEC_FILES]


def parse(paths: list[str] | None = None) -> Model:
    """Parse and merge the XML files into the model."""
    from lxml import etree  # type: ignore[import-untyped]

    if paths is None:
        paths = spec_paths()
    constants: dict[str, tuple[str, int, str]] = {}
    domains: dict[str, str] = {}
    classes: dict[str, dict[str, Any]] = {}

    for path in paths:
        root = etree.parse(path).getroot()
        for el in root.iterchildren("constant"):
            name = el.get("name")
            constants[name] = (name, int(el.get("value")), el.get("class") or "")
        for el in root.iterchildren("domain"):
            domains[el.get("name")] = el.get("type")
        for el in root.iterchildren("class"):
            _merge_class(classes, el)

    def resolve(field: Any) -> tuple[str, str, bool, str]:
        name = field.get("name")
        domain = field.get("domain") or field.get("type")
        wire = field.get("type") or domains.get(domain)
        seen = set()
        while wire not in WIRE_TYPES:
            if wire is None or wire in seen:
                raise ValueError("field %r: unresolvable domain %r" % (name, domain))
            seen.add(wire)
            wire = domains.get(wire)
        return (name, wire, field.get("reserved") == "1", domain)

    out_classes = []
    for cls in classes.values():
        props = tuple((name, wire) for name, wire, _r, _d in map(resolve, cls["properties"]))
        methods = []
        for m in cls["methods"].values():
            methods.append(
                (
                    m.get("name"),
                    int(m.get("index")),
                    m.get("synchronous") == "1",
                    m.get("content") == "1",
                    tuple(r.get("name") for r in m.iterchildren("response")),
                    tuple(resolve(f) for f in m.iterchildren("field")),
                )
            )
        out_classes.append((cls["name"], cls["index"], props, tuple(methods)))

    return {"constants": tuple(constants.values()), "classes": tuple(out_classes)}


def _merge_class(classes: dict[str, dict[str, Any]], el: Any) -> None:
    name = el.get("name")
    cls = classes.get(name)
    if cls is None:
        cls = classes[name] = {
            "name": name,
            "index": int(el.get("index")),
            "properties": [],
            "methods": {},
        }
    fields = list(el.iterchildren("field"))
    if fields:
        cls["properties"] = fields
    for m in el.iterchildren("method"):
        cls["methods"][m.get("name")] = m
