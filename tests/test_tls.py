"""amqps:// against the real broker, through a TLS-terminating proxy with a PKI made by the tests."""

from __future__ import annotations

import ast
import gc
import os
import re
import ssl
import threading
import urllib.parse

import pytest
import tlsutil
from faults import pump, sockets_to, wait_until
from seam import install_client_clock

import puka

PUKA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "puka")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return tlsutil.make_pki(str(tmp_path_factory.mktemp("pki")))


def make_proxy(amqp_url: str, certfile: str, keyfile: str, client_ca: str | None = None) -> tlsutil.TlsProxy:
    """A TLS proxy in front of the test broker (plain AMQP), with the broker's credentials for url()."""
    params = puka.parse_amqp_url(amqp_url)
    assert not params.tls, "the TLS tests need a plain-TCP broker behind their proxy"
    proxy = tlsutil.TlsProxy(certfile, keyfile, client_ca=client_ca, upstream=(params.host, params.port))
    proxy.userinfo = "%s:%s" % (q(params.username), q(params.password))
    return proxy


@pytest.fixture
def proxy(pki, amqp_url):
    """TLS on 127.0.0.1:<port> with the 'localhost' certificate, forwarding to the broker."""
    with make_proxy(amqp_url, pki.server_cert, pki.server_key) as p:
        yield p


@pytest.fixture
def mtls_proxy(pki, amqp_url):
    """Like ``proxy``, but requires a client certificate signed by the test CA."""
    with make_proxy(amqp_url, pki.server_cert, pki.server_key, client_ca=pki.ca_cert) as p:
        yield p


@pytest.fixture
def impostor_proxy(pki, amqp_url):
    """Presents a 'localhost' certificate signed by the untrusted CA."""
    with make_proxy(amqp_url, pki.impostor_cert, pki.impostor_key) as p:
        yield p


def q(path: str) -> str:
    return urllib.parse.quote(path, safe="")


def round_trip(client: puka.Client) -> None:
    """Connect, declare, publish (confirmed), get, close: the whole path works over TLS."""
    assert client.wait(client.connect(), timeout=10) is not None, "connect did not finish"
    assert client.server_properties["product"] == "RabbitMQ"
    queue = client.wait(client.queue_declare(queue="", exclusive=True), timeout=10)["queue"]
    body = os.urandom(200_000)  # several frames, several TLS records
    confirmed = client.wait(client.basic_publish(exchange="", routing_key=queue, body=body), timeout=10)
    assert confirmed is not None and not confirmed.is_error
    message = client.wait(client.basic_get(queue=queue, no_ack=True), timeout=10)
    assert message["body"] == body
    assert client.wait(client.close(), timeout=10) == {}
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue="after-close")


def connect_fails(client: puka.Client, server) -> puka.ConnectionBroken:
    """Connecting to ``server`` (a TLS endpoint of tlsutil) fails, and the client's socket is closed.

    The socket is closed when the process holds no socket to the server's port
    any more (counted precisely: other servers' threads closing their own sockets
    meanwhile do not change the count).
    """
    assert wait_until(lambda: sockets_to(server.port) == 0, 10)  # earlier connections are gone
    with pytest.raises(puka.ConnectionBroken) as info:
        client.wait(client.connect(), timeout=30)
    assert wait_until(lambda: sockets_to(server.port) == 0, 10), "the failed connection's socket is left open"
    return info.value


def settle(proxy: tlsutil.TlsProxy, handshakes: int = 0, errors: int = 0) -> None:
    """Wait for the proxy's thread to record what happened."""
    assert wait_until(lambda: proxy.handshakes >= handshakes and len(proxy.handshake_errors) >= errors, 10)


# --- trusted CA: the ways of giving it ----------------------------------------------------------


def test_ca_via_ssl_connection_parameters(proxy, pki):
    round_trip(puka.Client(proxy.url(), ssl_parameters=puka.SslConnectionParameters(ca_certs=pki.ca_cert)))
    settle(proxy, handshakes=1)
    assert proxy.handshakes == 1 and proxy.handshake_errors == []


def test_ca_via_ready_ssl_context(proxy, pki):
    context = ssl.create_default_context(cafile=pki.ca_cert)
    round_trip(puka.Client(proxy.url(), ssl_parameters=context))


def test_ca_via_context_inside_ssl_connection_parameters(proxy, pki):
    context = ssl.create_default_context(cafile=pki.ca_cert)
    round_trip(puka.Client(proxy.url(), ssl_parameters=puka.SslConnectionParameters(context=context)))


def test_ca_via_dict(proxy, pki):
    round_trip(puka.Client(proxy.url(), ssl_parameters={"ca_certs": pki.ca_cert}))


def test_ca_via_url_option(proxy, pki):
    round_trip(puka.Client(proxy.url(query="cacertfile=" + q(pki.ca_cert))))


def test_server_name_indication_url_option_checks_that_name(proxy, pki):
    url = proxy.url(host="127.0.0.1", query="cacertfile=%s&server_name_indication=localhost" % q(pki.ca_cert))
    round_trip(puka.Client(url))


def test_server_hostname_in_ssl_connection_parameters_checks_that_name(proxy, pki):
    params = puka.SslConnectionParameters(ca_certs=pki.ca_cert, server_hostname="localhost")
    round_trip(puka.Client(proxy.url(host="127.0.0.1"), ssl_parameters=params))


def test_server_hostname_in_dict_checks_that_name(proxy, pki):
    params = {"ca_certs": pki.ca_cert, "server_hostname": "localhost"}
    round_trip(puka.Client(proxy.url(host="127.0.0.1"), ssl_parameters=params))


# --- verification failures ---------------------------------------------------------------------


def test_hostname_mismatch_fails_verification(proxy, pki):
    client = puka.Client(proxy.url(host="127.0.0.1"), ssl_parameters=puka.SslConnectionParameters(ca_certs=pki.ca_cert))
    exc = connect_fails(client, proxy)
    assert "verification" in str(exc).lower()
    assert "127.0.0.1" in str(exc)
    settle(proxy, errors=1)
    assert proxy.handshakes == 0  # the client aborted the handshake


def test_hostname_mismatch_fails_with_url_cacertfile_too(proxy, pki):
    exc = connect_fails(puka.Client(proxy.url(host="127.0.0.1", query="cacertfile=" + q(pki.ca_cert))), proxy)
    assert "verification" in str(exc).lower()


def test_client_trusting_only_another_ca_fails(proxy, pki):
    client = puka.Client(proxy.url(), ssl_parameters=puka.SslConnectionParameters(ca_certs=pki.other_ca_cert))
    exc = connect_fails(client, proxy)
    assert "verification" in str(exc).lower()
    assert "issuer" in str(exc).lower()


def test_server_certificate_from_untrusted_ca_fails(impostor_proxy, pki):
    client = puka.Client(impostor_proxy.url(), ssl_parameters=puka.SslConnectionParameters(ca_certs=pki.ca_cert))
    exc = connect_fails(client, impostor_proxy)
    assert "verification" in str(exc).lower()
    settle(impostor_proxy, errors=1)
    assert impostor_proxy.handshakes == 0


@pytest.mark.parametrize(
    "ssl_parameters",
    [None, puka.SslConnectionParameters(), {}],
    ids=["none", "default-params", "empty-dict"],
)
def test_without_a_ca_the_system_trust_store_rejects_the_test_ca(proxy, ssl_parameters):
    exc = connect_fails(puka.Client(proxy.url(), ssl_parameters=ssl_parameters), proxy)
    assert "verification" in str(exc).lower()


def test_check_hostname_off_still_verifies_the_chain(impostor_proxy, proxy, pki):
    params = puka.SslConnectionParameters(ca_certs=pki.ca_cert, check_hostname=False)
    round_trip(puka.Client(proxy.url(host="127.0.0.1"), ssl_parameters=params))
    exc = connect_fails(puka.Client(impostor_proxy.url(), ssl_parameters=params), impostor_proxy)
    assert "verification" in str(exc).lower()


def test_verification_is_on_by_default(proxy, pki):
    context = puka.SslConnectionParameters().make_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert puka.SslConnectionParameters().require_certificate is True
    # A client made from a URL alone (no ssl_parameters) verifies the chain and the name.
    for option in ("", "verify=verify_peer"):
        # The chain: the test CA is in no system trust store.
        exc = connect_fails(puka.Client(proxy.url(query=option)), proxy)
        assert "certificate verification failed" in str(exc) and "issuer" in str(exc), (option, exc)
        # The name: with the CA trusted, the certificate for 'localhost' does not do for 127.0.0.1.
        query = "&".join(filter(None, [option, "cacertfile=" + q(pki.ca_cert)]))
        exc = connect_fails(puka.Client(proxy.url(host="127.0.0.1", query=query)), proxy)
        assert "certificate verification failed" in str(exc) and "127.0.0.1" in str(exc), (option, exc)
        # With both right, it connects: nothing else stood in the way.
        round_trip(puka.Client(proxy.url(query=query)))


# --- verification turned off explicitly --------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verify_false_turns_verification_off(impostor_proxy, host):
    # untrusted CA, and (for 127.0.0.1) the wrong name: accepted only because we said so
    params = puka.SslConnectionParameters(verify=False)
    round_trip(puka.Client(impostor_proxy.url(host=host), ssl_parameters=params))


def test_verify_false_in_a_dict_turns_verification_off(impostor_proxy):
    round_trip(puka.Client(impostor_proxy.url(host="127.0.0.1"), ssl_parameters={"verify": False}))


def test_require_certificate_false_turns_verification_off(impostor_proxy):
    params = puka.SslConnectionParameters()
    params.require_certificate = False  # the original puka's spelling
    round_trip(puka.Client(impostor_proxy.url(host="127.0.0.1"), ssl_parameters=params))


def test_verify_none_url_option_turns_verification_off(impostor_proxy):
    round_trip(puka.Client(impostor_proxy.url(host="127.0.0.1", query="verify=verify_none")))


# --- a handshake that never finishes ------------------------------------------------------------


@pytest.mark.parametrize("how", ["kwarg", "url-ms"])
def test_stalled_handshake_fails_at_the_connection_timeout(pki, monkeypatch, how):
    clock = install_client_clock(monkeypatch)  # the connect deadline is checked against the rule, not the wall
    with tlsutil.StalledTls() as stalled:
        params = puka.SslConnectionParameters(ca_certs=pki.ca_cert)
        if how == "kwarg":
            url = "amqps://localhost:%d/" % stalled.port
            client = puka.Client(url, ssl_parameters=params, connection_timeout=1)
        else:  # values above 1000 are milliseconds
            url = "amqps://localhost:%d/?connection_timeout=1500" % stalled.port
            client = puka.Client(url, ssl_parameters=params)
        expected = 1.0 if how == "kwarg" else 1.5
        assert client.connection_timeout == expected
        connect_promise = client.connect()
        assert pump(client, lambda: stalled.received > 0, timeout=10)  # the ClientHello went out, unanswered
        clock.advance(expected - 0.01)
        assert client.on_timer() == pytest.approx(0.01, abs=1e-6)  # the deadline is the next timer
        assert client.wait(connect_promise, timeout=0) is None
        clock.advance(0.02)
        client.on_timer()
        redacted = re.escape(puka.parse_amqp_url(url).redacted_url())
        timed_out = "^connecting to %s timed out after %gs$" % (redacted, expected)
        with pytest.raises(puka.ConnectionBroken, match=timed_out):
            client.wait(connect_promise, timeout=0)
        assert stalled.accepted == 1
        # The socket is closed: the process holds no socket to the stalled server any more.
        assert wait_until(lambda: sockets_to(stalled.port) == 0, 10), "the timed-out connection's socket is left open"


# --- client certificates -----------------------------------------------------------------------


def test_client_certificate_is_presented_when_given(mtls_proxy, pki):
    params = puka.SslConnectionParameters(ca_certs=pki.ca_cert, certfile=pki.client_cert, keyfile=pki.client_key)
    round_trip(puka.Client(mtls_proxy.url(), ssl_parameters=params))
    settle(mtls_proxy, handshakes=1)
    assert len(mtls_proxy.peer_certs) == 1
    assert ((("commonName", "puka-test-client"),),) == mtls_proxy.peer_certs[0]["subject"]


def test_client_certificate_from_url_options(mtls_proxy, pki):
    query = "cacertfile=%s&certfile=%s&keyfile=%s" % (q(pki.ca_cert), q(pki.client_cert), q(pki.client_key))
    round_trip(puka.Client(mtls_proxy.url(query=query)))
    settle(mtls_proxy, handshakes=1)
    assert [c["subject"] for c in mtls_proxy.peer_certs] == [((("commonName", "puka-test-client"),),)]


def test_without_a_client_certificate_the_proxy_refuses(mtls_proxy, pki):
    client = puka.Client(mtls_proxy.url(), ssl_parameters=puka.SslConnectionParameters(ca_certs=pki.ca_cert))
    connect_fails(client, mtls_proxy)
    settle(mtls_proxy, errors=1)
    assert mtls_proxy.handshakes == 0 and mtls_proxy.peer_certs == []
    assert any("certificate" in e for e in mtls_proxy.handshake_errors), mtls_proxy.handshake_errors


def test_external_auth_is_refused_clearly_when_the_broker_does_not_offer_it(mtls_proxy, pki):
    # The test broker has no rabbitmq_auth_mechanism_ssl: EXTERNAL must fail with a clear error.
    query = "auth_mechanism=EXTERNAL&cacertfile=%s&certfile=%s&keyfile=%s" % (
        q(pki.ca_cert),
        q(pki.client_cert),
        q(pki.client_key),
    )
    client = puka.Client(mtls_proxy.url(userinfo="", query=query))
    exc = connect_fails(client, mtls_proxy)
    assert "EXTERNAL" in str(exc)


# --- hygiene ----------------------------------------------------------------------------------


def test_ssl_wrap_socket_is_not_used_in_puka():
    """ssl.wrap_socket (removed in Python 3.12) skips hostname checks: puka must not use it."""
    offenders = []
    for root, _dirs, files in os.walk(PUKA_DIR):
        for filename in files:
            if not filename.endswith(".py"):
                continue
            path = os.path.join(root, filename)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            if re.search(r"(?<![\w.])ssl\s*\.\s*wrap_socket\b", source):
                offenders.append(path)
            for node in ast.walk(ast.parse(source, path)):
                if isinstance(node, ast.ImportFrom) and node.module == "ssl":
                    if any(alias.name == "wrap_socket" for alias in node.names):
                        offenders.append(path)
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == "wrap_socket"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "ssl"
                ):
                    offenders.append(path)
    assert offenders == []


def _open_fds() -> int:
    gc.collect()  # clients of earlier tests may still hold sockets
    return len(os.listdir("/proc/self/fd"))


def test_proxy_and_failed_connections_leave_no_fds_or_threads(pki, amqp_url):
    threads = set(threading.enumerate())
    fds = _open_fds()
    for _ in range(2):
        with make_proxy(amqp_url, pki.server_cert, pki.server_key) as proxy:
            round_trip(puka.Client(proxy.url(), ssl_parameters={"ca_certs": pki.ca_cert}))
            connect_fails(puka.Client(proxy.url(host="127.0.0.1"), ssl_parameters={"ca_certs": pki.ca_cert}), proxy)
            settle(proxy, handshakes=1, errors=1)
        assert not proxy.alive and proxy.open_sockets == 0
        with tlsutil.StalledTls() as stalled:
            client = puka.Client(
                "amqps://localhost:%d/" % stalled.port, ssl_parameters={"ca_certs": pki.ca_cert}, connection_timeout=0.2
            )
            connect_fails(client, stalled)
        assert not stalled.alive and stalled.open_sockets == 0
    assert set(threading.enumerate()) == threads
    assert _open_fds() == fds
