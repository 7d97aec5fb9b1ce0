"""Secrets stay secret (reprs, errors, tracebacks, logs) and message bodies stay bytes."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import socket
import subprocess
import traceback
import urllib.parse
import uuid

import pytest

import puka
from puka.tracing import FrameLogger, FrameRecorder

#: Distinctive, and with characters that must be percent-encoded in a URL.
PASSWORD = "Zq9!pukaS3cr3t#Wv7/x"
QUOTED = urllib.parse.quote(PASSWORD, safe="")
#: Distinctive pieces: none of them may show up either (e.g. half a password cut at '/' or '#').
PIECES = ("Zq9!pukaS3cr3t", "pukaS3cr3t", "Wv7/x")


def secret_forms(password: str = PASSWORD) -> list[str]:
    """Every spelling of the password that would betray it."""
    plain = "\0guest\0" + password
    return [
        password,
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote(password),
        repr(password)[1:-1],
        repr(password.encode())[2:-1],
        base64.b64encode(plain.encode()).decode(),
        *PIECES,
    ]


def assert_no_secret(text: str, what: str = "text") -> None:
    for form in secret_forms():
        assert form not in text, "the password (as %r) leaks in %s: %s" % (form, what, text)


def assert_exception_clean(exc: BaseException) -> None:
    """str, repr, args and the formatted traceback (with its chain) of an exception."""
    assert_no_secret(str(exc), "str(exc)")
    assert_no_secret(repr(exc), "repr(exc)")
    assert_no_secret(repr(exc.args), "exc.args")
    assert_no_secret("".join(traceback.format_exception(exc)), "the formatted traceback")
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            assert_exception_clean(linked)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def secret_user(amqp_url):
    """A broker user whose password is PASSWORD (so a real session sends it)."""
    user = "puka-sec-%s" % uuid.uuid4().hex[:8]

    def ctl(*args):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_user", user, PASSWORD)
    try:
        ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user
    finally:
        ctl("delete_user", user)


def broker_url(amqp_url: str, user: str, password: str) -> str:
    params = puka.parse_amqp_url(amqp_url)
    host = "[%s]" % params.host if ":" in params.host else params.host
    return "amqp://%s:%s@%s:%d/%s" % (
        urllib.parse.quote(user, safe=""),
        urllib.parse.quote(password, safe=""),
        host,
        params.port,
        urllib.parse.quote(params.vhost, safe=""),
    )


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="puka")
    return caplog


def all_log_text(caplog) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


# --- the self-test of the checker ---------------------------------------------------------------


def test_the_checker_sees_every_spelling():
    for text in ("x%sy" % PASSWORD, QUOTED, "AAA" + base64.b64encode(b"\0guest\0" + PASSWORD.encode()).decode()):
        with pytest.raises(AssertionError):
            assert_no_secret(text)
    assert_no_secret("amqp://guest:***@localhost:5672/%2F")


# --- reprs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:%s@localhost/" % QUOTED,
        "amqps://guest:%s@localhost:5671/vh?heartbeat=5" % QUOTED,
        "amqp://guest:%s@[::1]:5673/%%2f" % QUOTED,
        "amqp://:%s@localhost/" % QUOTED,
    ],
)
def test_reprs_never_show_the_password(url):
    params = puka.parse_amqp_url(url)
    assert params.password == PASSWORD
    assert_no_secret(repr(params), "repr(params)")
    assert_no_secret(str(params), "str(params)")
    assert_no_secret(params.redacted_url(), "redacted_url()")
    client = puka.Client(url)
    assert_no_secret(repr(client), "repr(Client)")
    assert_no_secret(repr(client.params), "repr(client.params)")
    assert "***" in repr(client)


# --- failed connections --------------------------------------------------------------------------


def test_wrong_password_errors_and_logs_never_show_it(amqp_url, debug_logs):
    client = puka.Client(broker_url(amqp_url, "guest", PASSWORD))
    try:
        client.wait(client.connect(), timeout=10)
    except puka.AccessRefused as exc:
        assert_exception_clean(exc)
        assert_no_secret(traceback.format_exc(), "traceback.format_exc()")
        refused = exc
    else:
        pytest.fail("a wrong password was accepted")
    # Every later call raises ConnectionBroken, the broker's (clean) error as its cause.
    with pytest.raises(puka.ConnectionBroken) as info:
        client.queue_declare(queue="x")
    assert info.value.__cause__ is refused
    assert_exception_clean(info.value)
    assert_no_secret(repr(client), "repr(Client)")
    assert_no_secret(all_log_text(debug_logs), "the log")


def test_refused_port_errors_and_logs_never_show_it(debug_logs):
    port = free_port()
    client = puka.Client("amqp://guest:%s@127.0.0.1:%d/" % (QUOTED, port), connection_timeout=5)
    try:
        client.wait(client.connect(), timeout=10)
    except puka.ConnectionBroken as exc:
        assert str(port) in str(exc)
        assert_exception_clean(exc)
        assert_no_secret(traceback.format_exc(), "traceback.format_exc()")
    else:
        pytest.fail("connected to a closed port")
    assert_no_secret(all_log_text(debug_logs), "the log")


def test_connect_timeout_error_never_shows_it():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (in the kernel) and never answers
    try:
        url = "amqp://guest:%s@127.0.0.1:%d/" % (QUOTED, listener.getsockname()[1])
        client = puka.Client(url, connection_timeout=0.3)
        with pytest.raises(puka.ConnectionBroken) as info:
            client.wait(client.connect(), timeout=10)
        assert "timed out" in str(info.value)
        assert_exception_clean(info.value)
    finally:
        listener.close()


BAD_URLS = [
    # malformed ports
    "amqp://guest:{pw}@localhost:notaport/",
    "amqp://guest:{pw}@localhost:99999/",
    "amqp://guest:{pw}@localhost:0/",
    "amqp://guest:{pw}@localhost:-1/",
    "amqp://guest:{pw}@localhost:+5672/",
    "amqp://guest:{pw}@localhost:5672:5673/",
    # malformed IPv6
    "amqp://guest:{pw}@[::1/",
    "amqp://guest:{pw}@[::1]:port/",
    "amqp://guest:{pw}@[::zz]/",
    "amqp://guest:{pw}@[::1]:70000/",
    # bad schemes, fragments, vhosts, options
    "http://guest:{pw}@localhost/",
    "amqpx://guest:{pw}@localhost/",
    "amqp://guest:{pw}@localhost/vhost#frag",
    "amqp://guest:{pw}@localhost/a/b",
    "amqp://guest:{pw}@localhost/?bogus=1",
    "amqp://guest:{pw}@localhost/?heartbeat=often",
    "amqp://guest:{pw}@localhost/?channel_max=1.5",
    "amqp://guest:{pw}@localhost/?auth_mechanism=CRAM-MD5",
]


#: The password as people write it by mistake: unencoded ('!' is legal in userinfo).
RAW = "Zq9!pukaS3cr3tWv7x"


def _bad_url_cases():
    for template in BAD_URLS:
        where = template.split("@", 1)[-1]
        yield pytest.param(template.format(pw=QUOTED), id=where)
        yield pytest.param(template.format(pw=RAW), id="raw-" + where)


def _check_bad_url(url: str) -> None:
    for make in (puka.parse_amqp_url, puka.Client):
        try:
            make(url)
        except ValueError as exc:
            assert_exception_clean(exc)
            assert_no_secret(traceback.format_exc(), "traceback.format_exc()")
        else:
            pytest.fail("%s accepted a bad URL" % make.__name__)


@pytest.mark.parametrize("url", list(_bad_url_cases()))
def test_bad_url_errors_never_show_the_password(url):
    _check_bad_url(url)


@pytest.mark.parametrize("delimiter", ["/", "#", "?"])
def test_unencoded_delimiter_in_password_is_not_echoed_as_the_port(delimiter):
    _check_bad_url("amqp://guest:Zq9!pukaS3cr3t%sWv7x@localhost/" % delimiter)


@pytest.mark.parametrize(
    "url",
    [
        "amqp:guest:%s@localhost/" % QUOTED,
        "amqp:/guest:%s@localhost/" % QUOTED,
        "amqp//guest:%s@localhost/" % QUOTED,
    ],
    ids=["no-slashes", "one-slash", "no-colon"],
)
def test_url_without_scheme_separator_is_not_echoed(url):
    _check_bad_url(url)


def test_undecodable_password_error_never_shows_it():
    _check_bad_url("amqp://guest:%s%%ff@localhost/" % urllib.parse.quote("Zq9!pukaS3cr3t", safe=""))


# --- logs of a whole session ---------------------------------------------------------------------


@pytest.mark.parametrize("frames", [False, True], ids=["plain", "frame-logger"])
def test_full_session_debug_logs_never_show_the_password(amqp_url, secret_user, name, debug_logs, frames):
    recorder = FrameRecorder()
    middleware = [FrameLogger(), recorder] if frames else []
    client = puka.Client(broker_url(amqp_url, secret_user, PASSWORD), middleware=middleware, heartbeat=5)
    assert_no_secret(repr(client), "repr(Client)")
    client.wait(client.connect(), timeout=10)
    assert_no_secret(repr(client), "repr(Client)")
    client.wait(client.queue_declare(queue=name, auto_delete=True), timeout=10)
    client.wait(client.basic_publish(exchange="", routing_key=name, body=b"hello"), timeout=10)
    consume = client.basic_consume(queue=name)
    message = client.wait(consume, timeout=10)
    assert message["body"] == b"hello"
    client.basic_ack(message)
    client.wait(client.basic_cancel(consume), timeout=10)
    client.wait(client.queue_delete(queue=name), timeout=10)
    client.wait(client.close(), timeout=10)
    logs = all_log_text(debug_logs)
    if frames:
        assert "connection.start-ok" in logs, "the frame logger logged nothing: the test proves nothing"
        assert "connection.start-ok" in recorder.names("out")
        assert_no_secret("\n".join(repr(f) for f in recorder.frames), "the recorded frames")
    assert_no_secret(logs, "the DEBUG log")


# --- message bodies are opaque bytes -------------------------------------------------------------

_tripped: list[str] = []


def _tripwire(what: str) -> str:
    _tripped.append(what)
    return what


class _Bomb:
    def __reduce__(self):
        return (_tripwire, ("unpickled!",))


def _publish_and_fetch(client, queue, body, headers):
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=body, headers=headers), timeout=10)
    got = client.wait(client.basic_get(queue=queue), timeout=10)
    client.basic_ack(got)
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=body, headers=headers), timeout=10)
    consume = client.basic_consume(queue=queue)
    delivered = client.wait(consume, timeout=10)
    client.basic_ack(delivered)
    client.wait(client.basic_cancel(consume), timeout=10)
    return got, delivered


@pytest.mark.parametrize(
    "content_type",
    [None, "application/python-pickle", "application/octet-stream"],
)
def test_a_pickle_body_is_never_unpickled(client, queue, content_type):
    body = pickle.dumps(_Bomb())
    pickle.loads(body)  # the payload is live: loading it trips the wire
    assert _tripped == ["unpickled!"]
    _tripped.clear()
    headers = {"content_type": content_type} if content_type else None
    for message in _publish_and_fetch(client, queue, body, headers):
        assert type(message["body"]) is bytes
        assert message["body"] == body
        if content_type:
            assert message["headers"]["content_type"] == content_type
    assert _tripped == []


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8"])
def test_a_json_body_is_returned_as_the_exact_bytes(client, queue, content_type):
    body = json.dumps({"a": [1, 2.5, None], "b": "\u00e9"}, separators=(", ", ": ")).encode()
    headers = {"content_type": content_type, "content_encoding": "utf-8"} if content_type else None
    for message in _publish_and_fetch(client, queue, body, headers):
        assert type(message["body"]) is bytes
        assert message["body"] == body  # not re-serialized, not decoded
        if content_type:
            assert message["headers"]["content_type"] == content_type


def test_a_str_body_comes_back_as_bytes(client, queue):
    for message in _publish_and_fetch(client, queue, '{"x": 1}', {"content_type": "application/json"}):
        assert type(message["body"]) is bytes
        assert message["body"] == b'{"x": 1}'
