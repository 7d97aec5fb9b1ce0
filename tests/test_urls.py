"""puka.parse_amqp_url and how Client uses it (RabbitMQ's URI spec, as puka/urls.py documents it)."""

from __future__ import annotations

import urllib.parse

import pytest
from seam import install_client_clock

import puka
from puka import ConnectionParameters, parse_amqp_url
from puka.tracing import FrameRecorder


def fields(url: str) -> tuple:
    p = parse_amqp_url(url)
    return (p.scheme, p.username, p.password, p.host, p.port, p.vhost, p.options)


# --- defaults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["amqp:///", "amqp://", "amqp://localhost", "amqp://localhost:5672/"])
def test_defaults(url):
    assert fields(url) == ("amqp", "guest", "guest", "localhost", 5672, "/", {})


def test_default_result_equals_default_parameters():
    assert parse_amqp_url("amqp:///") == ConnectionParameters()
    assert not parse_amqp_url("amqp:///").tls


@pytest.mark.parametrize("url", ["amqps:///", "amqps://localhost", "AMQPS://localhost/"])
def test_amqps_defaults_to_port_5671(url):
    p = parse_amqp_url(url)
    assert (p.scheme, p.port, p.tls) == ("amqps", 5671, True)


def test_explicit_port_wins_for_amqps():
    assert parse_amqp_url("amqps://h:5672/").port == 5672
    assert parse_amqp_url("amqp://h:5671/").port == 5671


def test_missing_user_or_password_default_to_guest():
    assert fields("amqp://bob@h/")[1:3] == ("bob", "guest")
    assert fields("amqp://bob:@h/")[1:3] == ("bob", "")
    assert fields("amqp://:pw@h/")[1:3] == ("", "pw")


def test_full_url():
    assert fields("amqp://alice:s3cret@broker.example:5673/prod") == (
        "amqp",
        "alice",
        "s3cret",
        "broker.example",
        5673,
        "prod",
        {},
    )


# --- percent-decoding and the vhost --------------------------------------------------------------


def test_userinfo_is_percent_decoded():
    p = parse_amqp_url("amqp://us%40er%3A1:p%40ss%3Aw%2Fo%23r%3Fd%25@h/")
    assert (p.username, p.password) == ("us@er:1", "p@ss:w/o#r?d%")


def test_unicode_is_percent_decoded_as_utf8():
    p = parse_amqp_url("amqp://%C3%A9l%C3%A8ve:m%C3%B8t@h/v%C3%A9")
    assert (p.username, p.password, p.vhost) == ("\u00e9l\u00e8ve", "m\u00f8t", "v\u00e9")


def test_host_is_percent_decoded():
    assert parse_amqp_url("amqp://my%2Dbroker.example/").host == "my-broker.example"


@pytest.mark.parametrize(
    "path, vhost",
    [
        ("", "/"),  # no path at all
        ("/", "/"),  # an empty path means '/'
        ("/%2f", "/"),
        ("/%2F", "/"),
        ("/%2fprod", "/prod"),
        ("/prod", "prod"),
        ("/prod%2fblue", "prod/blue"),
        ("/with%20space", "with space"),
        ("/%25", "%"),
    ],
)
def test_vhost(path, vhost):
    assert parse_amqp_url("amqp://h" + path).vhost == vhost


@pytest.mark.parametrize("path", ["/a/b", "//", "/a/", "/%2f/x"])
def test_vhost_with_an_unescaped_slash_is_a_value_error(path):
    with pytest.raises(ValueError, match="vhost"):
        parse_amqp_url("amqp://h" + path)


def test_redacted_url_round_trips_everything_but_the_password():
    p = parse_amqp_url("amqps://us%40er:pw@[::1]:5673/%2fv?heartbeat=5")
    assert p.redacted_url() == "amqps://us%40er:***@[::1]:5673/%2Fv"
    back = parse_amqp_url(p.redacted_url())
    assert (back.username, back.host, back.port, back.vhost) == ("us@er", "::1", 5673, "/v")


# --- IPv6 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, host, port",
    [
        ("amqp://[::1]", "::1", 5672),
        ("amqp://[::1]/", "::1", 5672),
        ("amqp://[::1]:5673", "::1", 5673),
        ("amqp://u:p@[::1]:5673/v", "::1", 5673),
        ("amqps://[2001:db8::17]/", "2001:db8::17", 5671),
        ("amqp://[::ffff:127.0.0.1]:1/", "::ffff:127.0.0.1", 1),
    ],
)
def test_ipv6_literals(url, host, port):
    p = parse_amqp_url(url)
    assert (p.host, p.port) == (host, port)


@pytest.mark.parametrize("url", ["amqp://[::1/", "amqp://[::1:5673/", "amqp://[::zz]/", "amqp://[::1]:port/"])
def test_malformed_ipv6_is_a_value_error(url):
    with pytest.raises(ValueError):
        parse_amqp_url(url)


@pytest.mark.parametrize("url", ["amqp://[::1]x/", "amqp://[::1]junk:5673/"])
def test_garbage_after_ipv6_bracket_is_a_value_error(url):
    with pytest.raises(ValueError):
        parse_amqp_url(url)


# --- ports and schemes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "port", ["0", "65536", "99999", "-1", "+5672", "abc", "5672x", "5_672", " 5672", "0x10", "\uff15\uff16"]
)
def test_bad_port_is_a_value_error(port):
    with pytest.raises(ValueError):
        parse_amqp_url("amqp://h:%s/" % port)


@pytest.mark.parametrize("port", ["1", "65535", "05672"])
def test_port_range(port):
    assert parse_amqp_url("amqp://h:%s/" % port).port == int(port)


@pytest.mark.parametrize(
    "url",
    [
        "http://h/",
        "amqpx://h/",
        "amqp:h",
        "amqp:/h/",
        "h:5672",
        "",
        "//h/",
        "amqp//h/",
    ],
)
def test_bad_scheme_is_a_value_error(url):
    with pytest.raises(ValueError, match="AMQP URL"):
        parse_amqp_url(url)


def test_fragment_is_a_value_error():
    with pytest.raises(ValueError, match="fragment"):
        parse_amqp_url("amqp://h/v#x")


def test_non_str_is_a_type_error():
    with pytest.raises(TypeError):
        parse_amqp_url(b"amqp:///")  # type: ignore[arg-type]


# --- query options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, key, value",
    [
        ("heartbeat=10", "heartbeat", 10.0),
        ("heartbeat=0", "heartbeat", 0.0),
        ("heartbeat=2.5", "heartbeat", 2.5),
        ("connection_timeout=5", "connection_timeout", 5.0),
        ("connection_timeout=0.5", "connection_timeout", 0.5),
        ("connection_timeout=1000", "connection_timeout", 1000.0),  # not above 1000: seconds
        ("connection_timeout=1001", "connection_timeout", 1.001),  # above 1000: milliseconds
        ("connection_timeout=2500", "connection_timeout", 2.5),
        ("connection_timeout=30000", "connection_timeout", 30.0),
        ("channel_max=10", "channel_max", 10),
        ("frame_max=8192", "frame_max", 8192),
        ("auth_mechanism=EXTERNAL", "auth_mechanism", "EXTERNAL"),
        ("auth_mechanism=PLAIN", "auth_mechanism", "PLAIN"),
        ("verify=verify_none", "verify", "verify_none"),
        ("server_name_indication=broker.example", "server_name_indication", "broker.example"),
        ("cacertfile=%2Ftmp%2Fca%20bundle.pem", "cacertfile", "/tmp/ca bundle.pem"),
    ],
)
def test_options(query, key, value):
    options = parse_amqp_url("amqp://h/?" + query).options
    assert options == {key: value}
    assert type(options[key]) is type(value)


def test_several_options():
    options = parse_amqp_url("amqps://h/v?heartbeat=5&channel_max=64&frame_max=131072&auth_mechanism=EXTERNAL").options
    assert options == {"heartbeat": 5.0, "channel_max": 64, "frame_max": 131072, "auth_mechanism": "EXTERNAL"}


def test_auth_mechanism_is_case_insensitive():
    assert parse_amqp_url("amqp://h/?auth_mechanism=external").options["auth_mechanism"].upper() == "EXTERNAL"


@pytest.mark.parametrize("query", ["bogus=1", "heartbeat_interval=5", "Heartbeat=5", "ssl=1", "password=x"])
def test_unknown_option_is_a_value_error(query):
    with pytest.raises(ValueError, match="unknown AMQP URL option"):
        parse_amqp_url("amqp://h/?" + query)


@pytest.mark.parametrize(
    "query",
    [
        "heartbeat=",
        "heartbeat=often",
        "connection_timeout=soon",
        "channel_max=1.5",
        "channel_max=many",
        "frame_max=",
        "auth_mechanism=CRAM-MD5",
        "auth_mechanism=",
    ],
)
def test_bad_option_value_is_a_value_error(query):
    with pytest.raises(ValueError):
        parse_amqp_url("amqp://h/?" + query)


@pytest.mark.parametrize("value", ["false", "0", "none", "bogus"])
def test_bad_verify_value_is_a_value_error(value):
    with pytest.raises(ValueError):
        parse_amqp_url("amqps://h/?verify=" + value)


@pytest.mark.parametrize("query", ["heartbeat=nan", "heartbeat=inf", "channel_max=-1"])
def test_numeric_options_that_break_the_handshake_are_rejected_at_construction(query):
    with pytest.raises(ValueError):
        puka.Client("amqp://127.0.0.1/?" + query)


@pytest.mark.parametrize("query", ["connection_timeout=nan", "connection_timeout=-1"])
def test_nonsense_connection_timeout_is_rejected_at_construction(query):
    with pytest.raises(ValueError):
        puka.Client("amqp://127.0.0.1/?" + query)


def with_query(amqp_url: str, query: str) -> str:
    """The test broker's URL with only these options."""
    params = puka.parse_amqp_url(amqp_url)
    return params.redacted_url().replace("***", urllib.parse.quote(params.password, safe="")) + "?" + query


# --- Client and URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://h/",
        "amqp://h:99999/",
        "amqp://h:abc/",
        "amqp://h/a/b",
        "amqp://h/?nope=1",
        "amqp://[::1/",
        "amqp://h/?heartbeat=x",
        "amqp://h/?heartbeat=-1",
    ],
)
def test_client_with_a_bad_url_raises_value_error_at_construction(url):
    with pytest.raises(ValueError):
        puka.Client(url)


def test_client_takes_timeouts_from_the_url():
    assert puka.Client("amqp:///?connection_timeout=2500").connection_timeout == 2.5
    assert puka.Client("amqp:///?connection_timeout=3").connection_timeout == 3.0
    assert puka.Client("amqp:///?connection_timeout=3", connection_timeout=7).connection_timeout == 7.0


def test_client_with_heartbeat_in_the_url_uses_it(amqp_url, monkeypatch):
    clock = install_client_clock(monkeypatch)
    recorder = FrameRecorder()
    client = puka.Client(with_query(amqp_url, "heartbeat=5"), middleware=[recorder])
    assert client.heartbeat == 5
    client.wait(client.connect())
    try:
        (tune_ok,) = [f.method for f in recorder.frames if f.direction == "out" and f.name == "connection.tune-ok"]
        assert tune_ok["heartbeat"] == 5  # what tune-ok said (the broker proposes 60)
        # What the transport enforces: a heartbeat after 2.5 s without sending, not before.
        clock.advance(2.4)
        client.on_timer()
        assert "heartbeat" not in recorder.names("out")
        clock.advance(0.11)
        client.on_timer()
        assert recorder.names("out").count("heartbeat") == 1
    finally:
        client.wait(client.close())


def test_client_uses_channel_and_frame_max_from_the_url(amqp_url):
    client = puka.Client(with_query(amqp_url, "channel_max=16&frame_max=8192"))
    client.wait(client.connect(), timeout=10)
    try:
        assert (client.channel_max, client.frame_max) == (16, 8192)
    finally:
        client.wait(client.close(), timeout=10)
