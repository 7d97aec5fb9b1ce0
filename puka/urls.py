"""AMQP URLs -> connection parameters.

Theory of operation: :func:`parse_amqp_url` follows RabbitMQ's URI spec:
``amqp[s]://user:password@host:port/vhost?option=value``.  Every component is
percent-decoded; an IPv6 host is written in brackets; missing parts default
to ``guest``/``guest`` at ``localhost`` on 5672 (5671 for ``amqps``) and the
vhost ``/``.  The vhost is the path without its leading slash, so ``/`` must be
written ``%2f`` when given explicitly; an empty path means ``/``.

Query options understood: ``heartbeat`` (seconds), ``connection_timeout``
(seconds; RabbitMQ's URI spec says milliseconds for ``connection_timeout``, so
values above 1000 are read as milliseconds), ``channel_max``, ``frame_max``,
``auth_mechanism`` (``PLAIN`` or ``EXTERNAL``) and for TLS ``verify``
(``verify_peer``/``verify_none``), ``cacertfile``, ``certfile``, ``keyfile``,
``server_name_indication``.  Anything else is a ValueError, as is any
malformed URL: errors surface at construction, not at connect time.

The password never appears in a repr or an error message.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_OPTIONS = {
    "heartbeat": float,
    "connection_timeout": float,
    "channel_max": int,
    "frame_max": int,
    "auth_mechanism": str,
    "verify": str,
    "cacertfile": str,
    "certfile": str,
    "keyfile": str,
    "server_name_indication": str,
}


class ConnectionParameters:
    """Where and how to connect; what :func:`parse_amqp_url` returns."""

    __slots__ = ("scheme", "username", "password", "host", "port", "vhost", "options")

    def __init__(
        self,
        scheme: str = "amqp",
        username: str = "guest",
        password: str = "guest",
        host: str = "localhost",
        port: int = 5672,
        vhost: str = "/",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.scheme = scheme
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.vhost = vhost
        self.options = options or {}

    @property
    def tls(self) -> bool:
        return self.scheme == "amqps"

    def __repr__(self) -> str:
        return "<ConnectionParameters %s>" % self.redacted_url()

    def redacted_url(self) -> str:
        """The URL with the password replaced by ``***``."""
        import urllib.parse

        host = "[%s]" % self.host if ":" in self.host else self.host
        user = urllib.parse.quote(self.username, safe="")
        vhost = urllib.parse.quote(self.vhost, safe="")
        return "%s://%s:***@%s:%d/%s" % (self.scheme, user, host, self.port, vhost)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionParameters):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


def parse_amqp_url(url: str) -> ConnectionParameters:
    """Parse an ``amqp://`` or ``amqps://`` URL; ValueError when it is not one."""
    import urllib.parse

    if not isinstance(url, str):
        raise TypeError("the AMQP URL must be a str, not %s" % type(url).__name__)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("amqp", "amqps"):
        raise ValueError("not an AMQP URL (expected amqp:// or amqps://): %s" % _scrub(url))
    # urlsplit knows the netloc rules for any scheme; split a neutral form.
    try:
        parts = urllib.parse.urlsplit("//" + rest)
        port = parts.port
    except ValueError as exc:
        raise ValueError("malformed AMQP URL %s: %s" % (_scrub(url), _scrub(str(exc)))) from None
    if parts.fragment:
        raise ValueError("an AMQP URL has no fragment: %s" % _scrub(url))
    netloc_host = parts.netloc.rpartition("@")[2]
    if netloc_host.startswith("[") and "]" not in netloc_host:
        raise ValueError("unterminated IPv6 address in %s" % _scrub(url))

    username = _unquote(parts.username) if parts.username is not None else "guest"
    password = _unquote(parts.password) if parts.password is not None else "guest"
    host = _unquote(parts.hostname) if parts.hostname else "localhost"
    if port is None:
        port = 5671 if scheme == "amqps" else 5672
    if not 0 < port < 65536:
        raise ValueError("port %d out of range in %s" % (port, _scrub(url)))
    path = parts.path
    if path.startswith("/"):
        path = path[1:]
    if "/" in path:
        raise ValueError("the vhost must be a single path segment (write '/' as %%2f): %s" % _scrub(url))
    vhost = _unquote(path) if path else "/"

    options: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        kind = _OPTIONS.get(key)
        if kind is None:
            raise ValueError("unknown AMQP URL option %r (known: %s)" % (key, ", ".join(sorted(_OPTIONS))))
        try:
            options[key] = kind(value)
        except ValueError:
            raise ValueError("AMQP URL option %s=%r is not a valid %s" % (key, value, kind.__name__)) from None
    if "connection_timeout" in options and options["connection_timeout"] > 1000:
        options["connection_timeout"] /= 1000.0  # RabbitMQ's URI spec: milliseconds
    if options.get("auth_mechanism", "PLAIN").upper() not in ("PLAIN", "EXTERNAL"):
        raise ValueError("auth_mechanism must be PLAIN or EXTERNAL")
    return ConnectionParameters(scheme, username, password, host, port, vhost, options)


def _unquote(value: str) -> str:
    import urllib.parse

    return urllib.parse.unquote(value, errors="strict")


def _scrub(text: str) -> str:
    """Remove any password from a URL-ish text, for error messages."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return "%s://%s:***@%s" % (scheme, user, hostpart)
