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


# --- several hosts: parse_amqp_urls ----------------------------------------------------------------

parse_amqp_urls = puka.urls.parse_amqp_urls
redacted_urls = puka.urls.redacted_urls


def endpoints(url_or_urls) -> list[tuple[str, int]]:
    return [(p.host, p.port) for p in parse_amqp_urls(url_or_urls)]


@pytest.mark.parametrize(
    "url", ["amqp:///", "amqp://alice:s3cret@broker.example:5673/prod", "amqps://[::1]/?heartbeat=5", "amqp://h"]
)
def test_one_host_gives_what_parse_amqp_url_gives(url):
    assert parse_amqp_urls(url) == [parse_amqp_url(url)]
    assert parse_amqp_urls([url]) == parse_amqp_urls((url,)) == [parse_amqp_url(url)]


def test_hosts_separated_by_commas_share_everything_but_host_and_port():
    hosts = parse_amqp_urls("amqp://alice:s%40cret@h1:5673,h2,h3:5674/prod?heartbeat=5&channel_max=64")
    assert [(p.host, p.port) for p in hosts] == [("h1", 5673), ("h2", 5672), ("h3", 5674)]
    for p in hosts:
        assert (p.scheme, p.username, p.password, p.vhost) == ("amqp", "alice", "s@cret", "prod")
        assert p.options == {"heartbeat": 5.0, "channel_max": 64}
    hosts[0].options["heartbeat"] = 1.0
    assert hosts[1].options["heartbeat"] == 5.0  # each host has its own options


def test_the_order_of_the_hosts_is_kept():
    assert endpoints("amqp://c,a,b/") == [("c", 5672), ("a", 5672), ("b", 5672)]


def test_amqps_hosts_default_to_5671():
    assert endpoints("amqps://u:p@h1,h2:5672,h3/") == [("h1", 5671), ("h2", 5672), ("h3", 5671)]
    assert all(p.tls for p in parse_amqp_urls("AMQPS://h1,h2/"))


def test_ipv6_hosts_in_a_list():
    assert endpoints("amqp://u:p@[::1]:5680,[2001:db8::17],h3:1,[::ffff:127.0.0.1]/v") == [
        ("::1", 5680),
        ("2001:db8::17", 5672),
        ("h3", 1),
        ("::ffff:127.0.0.1", 5672),
    ]


def test_hosts_without_credentials_or_path():
    hosts = parse_amqp_urls("amqp://h1,h2")
    assert [(p.username, p.password, p.host, p.vhost) for p in hosts] == [
        ("guest", "guest", "h1", "/"),
        ("guest", "guest", "h2", "/"),
    ]


def test_a_comma_in_the_user_or_password_is_not_a_host_separator():
    hosts = parse_amqp_urls("amqp://a,b:c,d@h1,h2/")
    assert [(p.username, p.password, p.host) for p in hosts] == [("a,b", "c,d", "h1"), ("a,b", "c,d", "h2")]


def test_a_list_of_urls_is_parsed_url_by_url():
    hosts = parse_amqp_urls(["amqp://a:pa@h1/v1", "amqps://b:pb@h2,h3:6000/v2?heartbeat=3"])
    assert [(p.scheme, p.username, p.password, p.host, p.port, p.vhost, p.options) for p in hosts] == [
        ("amqp", "a", "pa", "h1", 5672, "v1", {}),
        ("amqps", "b", "pb", "h2", 5671, "v2", {"heartbeat": 3.0}),
        ("amqps", "b", "pb", "h3", 6000, "v2", {"heartbeat": 3.0}),
    ]
    assert parse_amqp_urls(("amqp://h1", "amqp://h2")) == parse_amqp_urls("amqp://h1,h2")


def test_parse_amqp_url_refuses_several_hosts_and_names_parse_amqp_urls():
    with pytest.raises(ValueError, match="several hosts.*parse_amqp_urls"):
        parse_amqp_url("amqp://u:p@h1:5672,h2:5673/")


@pytest.mark.parametrize(
    "url, match",
    [
        ("amqp://h1,,h2/", "host 2 of 3.*empty host"),
        ("amqp://h1,/", "host 2 of 2.*empty host"),
        ("amqp://,h1/", "host 1 of 2.*empty host"),
        ("amqp://h1,h2:abc/", "host 2 of 2.*port"),
        ("amqp://h1:99999,h2/", "host 1 of 2.*port"),
        ("amqp://h1,h2:5672:5673/", "host 2 of 2"),
        ("amqp://h1,[::zz]/", "host 2 of 2"),
        ("amqp://[::1,h2]/", "host 1 of 2"),
        ("amqp://h1,[::1]x/", "host 2 of 2.*IPv6"),
        ("amqp://h1,h2/a/b", "vhost"),
        ("amqp://h1,h2/v#x", "fragment"),
        ("amqp://h1,h2/?nope=1", "unknown AMQP URL option"),
        ("http://h1,h2/", "not an AMQP URL"),
        ("amqp://h1,h2/v@x", "'@' after the host list"),
        ("amqp://h1,h2/?cacertfile=/a@b", "'@' after the host list"),
    ],
)
def test_a_bad_host_list_is_a_value_error_naming_what_is_wrong(url, match):
    with pytest.raises(ValueError, match=match):
        parse_amqp_urls(url)
    with pytest.raises(ValueError, match=match):
        parse_amqp_urls(["amqp://fine/", url])


def test_an_at_sign_after_the_host_list_may_be_percent_encoded():
    assert [p.vhost for p in parse_amqp_urls("amqp://h1,h2/v%40x")] == ["v@x", "v@x"]


def test_an_empty_list_is_a_value_error_and_other_types_type_errors():
    with pytest.raises(ValueError, match="empty"):
        parse_amqp_urls([])
    for bad in (b"amqp:///", None, 5, {"amqp:///"}, ["amqp:///", b"amqp:///"]):
        with pytest.raises(TypeError):
            parse_amqp_urls(bad)


def test_redacted_url_per_host_and_for_a_list():
    hosts = parse_amqp_urls("amqps://us%40er:pw@[::1]:5673,h2/%2fv")
    assert [p.redacted_url() for p in hosts] == [
        "amqps://us%40er:***@[::1]:5673/%2Fv",
        "amqps://us%40er:***@h2:5671/%2Fv",
    ]
    assert redacted_urls(hosts) == "amqps://us%40er:***@[::1]:5673/%2Fv, amqps://us%40er:***@h2:5671/%2Fv"
    assert redacted_urls([]) == "none"
    assert parse_amqp_urls([p.redacted_url() for p in hosts])[1].port == 5671


#: With the delimiters people forget to encode: ',' '/' '#' and '!'.
MULTI_PASSWORD = "Zq9!Xk7,Wv2/Jm4#Qp8"

MULTI_BAD_URLS = [
    "amqp://guest:{pw}@h1,,h2/",
    "amqp://guest:{pw}@h1,/",
    "amqp://guest:{pw}@,h1/",
    "amqp://guest:{pw}@h1,h2:notaport/",
    "amqp://guest:{pw}@h1:99999,h2/",
    "amqp://guest:{pw}@h1:5672:5673,h2/",
    "amqp://guest:{pw}@[::1,h2]/",
    "amqp://guest:{pw}@h1,[::zz]/",
    "amqp://guest:{pw}@h1,[::1]x/",
    "amqp://guest:{pw}@h1,h2/a/b",
    "amqp://guest:{pw}@h1,h2/v#frag",
    "amqp://guest:{pw}@h1,h2/?bogus=1",
    "amqp://guest:{pw}@h1,h2/?heartbeat=often",
    "amqp://guest:{pw}@h1,h2/v@x",
    "http://guest:{pw}@h1,h2/",
    "amqp:guest:{pw}@h1,h2/",
    "amqp://guest:{pw}%ff@h1,h2/",
]


def assert_password_absent(exc: BaseException | None) -> None:
    """No 3 characters in a row of the password, nor its encoded form, in the exception or its chain."""
    if exc is None:
        return
    import traceback

    texts = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    for text in texts:
        assert urllib.parse.quote(MULTI_PASSWORD, safe="") not in text
        for i in range(len(MULTI_PASSWORD) - 2):
            assert MULTI_PASSWORD[i : i + 3] not in text, "%r leaks in %s" % (MULTI_PASSWORD[i : i + 3], text)
    assert_password_absent(exc.__cause__)
    assert_password_absent(exc.__context__)


@pytest.mark.parametrize("template", MULTI_BAD_URLS)
@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "raw"])
def test_multi_host_errors_never_show_the_password(template, encoded):
    url = template.format(pw=urllib.parse.quote(MULTI_PASSWORD, safe="") if encoded else MULTI_PASSWORD)
    for parse, arg in (
        (parse_amqp_urls, url),
        (parse_amqp_urls, [url]),
        (parse_amqp_urls, ("amqp://fine/", url)),
        (parse_amqp_url, url),
    ):
        with pytest.raises(ValueError) as info:
            parse(arg)
        assert_password_absent(info.value)


def test_several_hosts_given_to_parse_amqp_url_never_show_the_password():
    for pw in (urllib.parse.quote(MULTI_PASSWORD, safe=""), MULTI_PASSWORD):
        with pytest.raises(ValueError) as info:
            parse_amqp_url("amqp://guest:%s@h1,h2/" % pw)
        assert_password_absent(info.value)


def test_multi_host_reprs_never_show_the_password():
    hosts = parse_amqp_urls("amqp://guest:%s@h1,[::1]:5673/" % urllib.parse.quote(MULTI_PASSWORD, safe=""))
    assert [p.password for p in hosts] == [MULTI_PASSWORD] * 2
    for text in (repr(hosts), redacted_urls(hosts)):
        for i in range(len(MULTI_PASSWORD) - 2):
            assert MULTI_PASSWORD[i : i + 3] not in text
