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

Several hosts (:func:`parse_amqp_urls`): the authority may list hosts
separated by commas, ``amqp://user:pass@h1:5672,h2:5673,[::1]/vhost``, each
with its own optional port (default as above); the user, password, vhost and
options are shared.  Each host is parsed as the one-host URL it stands for, so
the rules above apply to every one.  A list or tuple of URLs is taken too, each
parsed on its own (so they may differ in anything).  In a URL with several
hosts an ``@`` after the host list must be percent-encoded (``%40``): else it
cannot be told from a password with an unencoded ``/ ? #`` in it.
:func:`parse_amqp_url` takes one host and names :func:`parse_amqp_urls` when
given several.

The password never appears in a repr or an error message.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
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
        """True for ``amqps``."""
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
    """Parse an ``amqp://`` or ``amqps://`` URL with one host; ValueError when it is not one.

    Error messages never contain the password.  For several hosts, see
    :func:`parse_amqp_urls`.
    """
    import urllib.parse

    scheme, rest = _split_scheme(url)
    if _host_list(url, rest) is not None:
        raise ValueError("the AMQP URL %s names several hosts: parse it with puka.urls.parse_amqp_urls" % _scrub(url))
    # urlsplit knows the netloc rules for any scheme; split a neutral form.
    # The errors are raised outside the except blocks: the original exception,
    # which may quote part of the password, must not even be the __context__.
    try:
        parts = urllib.parse.urlsplit("//" + rest)
        port = parts.port
        malformed = False
    except ValueError:
        malformed = True
    if malformed:
        raise ValueError("malformed host or port in AMQP URL %s%s" % (_scrub(url), _HINT))
    if parts.fragment:
        raise ValueError("an AMQP URL has no fragment: %s%s" % (_scrub(url), _HINT))
    netloc_host = parts.netloc.rpartition("@")[2]
    if netloc_host.startswith("["):
        closing = netloc_host.find("]")
        after = netloc_host[closing + 1 :] if closing >= 0 else None
        if after is None or (after and not after.startswith(":")):
            raise ValueError("malformed IPv6 address in %s" % _scrub(url))

    username = _unquote(parts.username, "user name") if parts.username is not None else "guest"
    password = _unquote(parts.password, "password") if parts.password is not None else "guest"
    host = _unquote(parts.hostname, "host") if parts.hostname else "localhost"
    if port is None:
        port = 5671 if scheme == "amqps" else 5672
    if not 0 < port < 65536:
        raise ValueError("port %d out of range in %s" % (port, _scrub(url)))
    path = parts.path
    if path.startswith("/"):
        path = path[1:]
    if "/" in path:
        raise ValueError("the vhost must be a single path segment (write '/' as %%2f): %s%s" % (_scrub(url), _HINT))
    vhost = _unquote(path, "vhost") if path else "/"

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
    for key in ("heartbeat", "connection_timeout", "channel_max", "frame_max"):
        if key in options:
            check_option(key, options[key])
    if options.get("auth_mechanism", "PLAIN").upper() not in ("PLAIN", "EXTERNAL"):
        raise ValueError("auth_mechanism must be PLAIN or EXTERNAL")
    if options.get("verify", "verify_peer") not in ("verify_peer", "verify_none"):
        raise ValueError("verify must be verify_peer or verify_none")
    return ConnectionParameters(scheme, username, password, host, port, vhost, options)


def parse_amqp_urls(url_or_urls: str | Sequence[str]) -> list[ConnectionParameters]:
    """Parse a URL with one or several hosts, or a list or tuple of such URLs.

    One :class:`ConnectionParameters` per host, in the order given; a
    ValueError (naming the host at fault) when any of them is malformed, an
    empty list included.  Error messages never contain the password.
    """
    if isinstance(url_or_urls, str):
        urls: Sequence[str] = (url_or_urls,)
    elif isinstance(url_or_urls, (list, tuple)):
        urls = url_or_urls
        if not urls:
            raise ValueError("no AMQP URL given: the list of URLs is empty")
    else:
        raise TypeError("the AMQP URL must be a str, or a list or tuple of them, not %s" % type(url_or_urls).__name__)
    result = []
    for url in urls:
        split = _host_list(url, _split_scheme(url)[1])
        if split is None:
            result.append(parse_amqp_url(url))
            continue
        head, hosts, tail = split
        for number, host in enumerate(hosts, 1):
            problem = "an empty host (two commas in a row, or a comma at an end)"
            if host:
                # Raised after the except block: no exception context, however clean.
                try:
                    result.append(parse_amqp_url(head + host + tail))
                    continue
                except ValueError as exc:
                    problem = str(exc)
            raise ValueError("host %d of %d in the AMQP URL %s: %s" % (number, len(hosts), _scrub(url), problem))
    return result


def redacted_urls(hosts: Iterable[ConnectionParameters]) -> str:
    """The hosts' URLs without their passwords, for messages ("hosts tried: ...")."""
    return ", ".join(params.redacted_url() for params in hosts) or "none"


_HINT = " (characters such as / ? # @ in the user or password must be percent-encoded)"


def _split_scheme(url: str) -> tuple[str, str]:
    """(scheme, what follows ``://``); TypeError or ValueError when it is no AMQP URL."""
    if not isinstance(url, str):
        raise TypeError("the AMQP URL must be a str, not %s" % type(url).__name__)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("amqp", "amqps"):
        raise ValueError("not an AMQP URL (expected amqp:// or amqps://): %s" % _scrub(url))
    return scheme, rest


def _host_list(url: str, rest: str) -> tuple[str, list[str], str] | None:
    """For a URL with several hosts: (``scheme://userinfo@``, the hosts, what follows them); else None.

    The authority ends where urlsplit ends it (the first ``/ ? #``); the hosts
    follow its last ``@``.  An ``@`` after the authority makes the split
    ambiguous (an unencoded ``/ ? #`` in the password would cut the authority
    short), so it is refused rather than guessed, without echoing the password.
    """
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    userinfo, at, hosts = rest[:end].rpartition("@")
    if "," not in hosts:
        return None
    tail = rest[end:]
    if "@" in tail:
        raise ValueError(
            "an '@' after the host list of the AMQP URL %s: write it %%40 in the vhost or options%s"
            % (_scrub(url), _HINT)
        )
    return url[: len(url) - len(rest)] + userinfo + at, hosts.split(","), tail


def check_option(name: str, value: Any) -> None:
    """ValueError unless a numeric connection setting is finite and in range."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or value
        in (
            float("inf"),
            float("-inf"),
        )
    ):
        raise ValueError("%s must be a finite number, not %r" % (name, value))
    if name == "heartbeat" and not 0 <= value <= 65535:
        raise ValueError("heartbeat must be between 0 and 65535 seconds, not %r" % value)
    if name == "connection_timeout" and not value > 0:
        raise ValueError("connection_timeout must be more than 0 seconds, not %r" % value)
    if name == "channel_max" and not 0 <= value <= 65535:
        raise ValueError("channel_max must be between 0 and 65535, not %r" % value)
    if name == "frame_max" and not (value == 0 or 4096 <= value <= 0xFFFFFFFF):
        raise ValueError("frame_max must be 0 (no limit) or between 4096 and 2**32-1, not %r" % value)


def _unquote(value: str, part: str) -> str:
    import urllib.parse

    try:
        return urllib.parse.unquote(value, errors="strict")
    except UnicodeDecodeError:
        pass
    raise ValueError("the %s in the AMQP URL has a percent-escape that is not UTF-8" % part)


def _scrub(text: str) -> str:
    """Remove any password from a URL-ish text, for error messages."""
    head, at, tail = text.rpartition("@")
    if not at:
        return text
    # Whatever precedes the user info: a scheme and slashes, well formed or not.
    prefix_end = 0
    colon = head.find(":")
    if colon > 0 and head[:colon].replace("+", "").replace(".", "").replace("-", "").isalnum():
        prefix_end = colon + 1
        while prefix_end < len(head) and head[prefix_end] == "/":
            prefix_end += 1
    prefix, userinfo = head[:prefix_end], head[prefix_end:]
    if ":" not in userinfo:
        return text
    return "%s%s:***@%s" % (prefix, userinfo.split(":", 1)[0], tail)
