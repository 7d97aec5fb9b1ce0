"""TLS helpers for the tests: a throw-away PKI and TLS endpoints in background threads.

* :func:`make_pki` writes, with the ``openssl`` command line, a test CA, a server
  certificate for the DNS name ``localhost`` only (no IP address SAN), a client
  certificate signed by the same CA, and a second, untrusted CA with an impostor
  ``localhost`` certificate of its own.  Nothing is added to the project.
* :class:`TlsProxy` accepts TLS on ``127.0.0.1:<ephemeral>`` and forwards the
  plaintext to the real broker (both directions), optionally requiring a client
  certificate, so ``amqps://`` can be tested against a plain-TCP RabbitMQ.
* :class:`StalledTls` accepts TCP connections and never answers the ClientHello.

Both servers run one ``selectors`` loop in one thread; ``close()`` wakes the loop,
joins the thread and closes every socket they opened (``open_fds`` counts them).
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass

BROKER = ("127.0.0.1", 5672)
_DAYS = "2"


@dataclass(frozen=True)
class Pki:
    directory: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_cert: str  # a CA nobody trusts
    impostor_cert: str  # localhost, signed by the untrusted CA
    impostor_key: str


def _openssl(*args: str, cwd: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the openssl command line is needed to make test certificates")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), proc.stderr))


def _make_ca(directory: str, stem: str, common_name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", stem + ".key", "-out", stem + ".pem", "-days", _DAYS, "-subj", "/CN=" + common_name,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def _make_leaf(directory: str, stem: str, ca: str, common_name: str, extensions: str) -> None:
    ext_file = stem + ".ext"
    with open(os.path.join(directory, ext_file), "w") as f:
        f.write(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", stem + ".key", "-out", stem + ".csr", "-subj", "/CN=" + common_name,
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", stem + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", _DAYS,
        "-extfile", ext_file, "-out", stem + ".pem",
        cwd=directory,
    )  # fmt: skip


_SERVER_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=DNS:localhost\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)
_CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=clientAuth\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)


def make_pki(directory: str) -> Pki:
    """Write the test PKI into ``directory`` (which must exist)."""
    _make_ca(directory, "ca", "puka test CA")
    _make_ca(directory, "other-ca", "puka untrusted CA")
    _make_leaf(directory, "server", "ca", "localhost", _SERVER_EXT)
    _make_leaf(directory, "client", "ca", "puka-test-client", _CLIENT_EXT)
    _make_leaf(directory, "impostor", "other-ca", "localhost", _SERVER_EXT)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    return Pki(
        directory=directory,
        ca_cert=p("ca.pem"),
        server_cert=p("server.pem"),
        server_key=p("server.key"),
        client_cert=p("client.pem"),
        client_key=p("client.key"),
        other_ca_cert=p("other-ca.pem"),
        impostor_cert=p("impostor.pem"),
        impostor_key=p("impostor.key"),
    )


# --- servers -------------------------------------------------------------------------------------


class _Server:
    """A listening socket on 127.0.0.1:<ephemeral> and a selectors loop in a thread."""

    def __init__(self, name: str) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.host, self.port = self.listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._sockets: set[socket.socket] = set()
        self._stop = False
        self.accepted = 0
        self.errors: list[BaseException] = []  # unexpected failures of the loop itself
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # subclasses
    def _on_accept(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self, _mask: int) -> None:
        try:
            sock, _addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        self.accepted += 1
        self._sockets.add(sock)
        self._on_accept(sock)

    def _run(self) -> None:
        try:
            while not self._stop:
                for key, mask in self.sel.select(1.0):
                    if key.data is None:  # woken up
                        try:
                            self._wake_r.recv(64)
                        except BlockingIOError:
                            pass
                        continue
                    if key.fileobj.fileno() == -1:  # closed earlier in this round
                        continue
                    key.data(mask)
        except BaseException as exc:  # pragma: no cover - reported by close()
            self.errors.append(exc)

    def _forget(self, sock: socket.socket) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        self._sockets.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    @property
    def open_sockets(self) -> int:
        return sum(1 for s in list(self._sockets) if s.fileno() != -1)

    def close(self) -> None:
        """Stop the loop, join the thread, close every socket."""
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("%s did not stop" % self._thread.name)
        for sock in list(self._sockets):
            self._forget(sock)
        for sock in (self.listener, self._wake_r):
            self._forget(sock)
        self._wake_w.close()
        self.sel.close()
        if self.errors:
            raise RuntimeError("%s failed: %r" % (self._thread.name, self.errors[0]))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class StalledTls(_Server):
    """Accepts TCP and reads (discarding) whatever comes, never answering: a TLS handshake stalls."""

    def __init__(self) -> None:
        self.received = 0
        super().__init__("stalled-tls")

    def _on_accept(self, sock: socket.socket) -> None:
        self.sel.register(sock, selectors.EVENT_READ, lambda mask: self._read(sock))

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(sock)
        else:
            self.received += len(data)


class _Pair:
    """One proxied connection: the client's TLS socket and the broker's plain socket."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.plain: socket.socket | None = None
        self.handshaking = True
        self.want_write = False  # the TLS layer asked for writability
        self.to_plain = bytearray()
        self.to_tls = bytearray()
        self.tls_eof = False
        self.plain_eof = False


class TlsProxy(_Server):
    """TLS on 127.0.0.1:<port> -> plain TCP to the broker; see the module docstring.

    ``client_ca``: require a client certificate signed by it.  After the fact,
    ``handshakes`` counts completed TLS handshakes, ``peer_certs`` holds the
    client certificates presented (as ``getpeercert()`` dicts) and
    ``handshake_errors`` the handshake failures (as strings).
    """

    def __init__(self, certfile: str, keyfile: str, client_ca: str | None = None, upstream=BROKER) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        self.context = ctx
        self.upstream = upstream
        self.handshakes = 0
        self.peer_certs: list[dict] = []
        self.handshake_errors: list[str] = []
        self.pairs: list[_Pair] = []
        super().__init__("tls-proxy")

    #: credentials put in url() by default (percent-encoded user:password)
    userinfo = "guest:guest"

    def url(self, host: str = "localhost", userinfo: str | None = None, query: str = "") -> str:
        userinfo = self.userinfo if userinfo is None else userinfo
        userinfo = userinfo + "@" if userinfo else ""
        return "amqps://%s%s:%d/%s" % (userinfo, host, self.port, ("?" + query) if query else "")

    def _on_accept(self, sock: socket.socket) -> None:
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self._sockets.discard(sock)  # wrap_socket detached it
        self._sockets.add(tls)
        pair = _Pair(tls)
        self.pairs.append(pair)
        self.sel.register(tls, selectors.EVENT_READ, lambda mask: self._on_tls(pair, mask))
        self._handshake(pair)

    # --- the TLS side --------------------------------------------------------------------------

    def _handshake(self, pair: _Pair) -> None:
        try:
            pair.tls.do_handshake()
        except ssl.SSLWantReadError:
            pair.want_write = False
        except ssl.SSLWantWriteError:
            pair.want_write = True
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            self._drop(pair)
            return
        else:
            pair.handshaking = False
            pair.want_write = False
            self.handshakes += 1
            cert = pair.tls.getpeercert()
            if cert:
                self.peer_certs.append(cert)
            try:
                plain = socket.create_connection(self.upstream, timeout=5)
            except OSError as exc:
                self.handshake_errors.append("upstream: %s" % exc)
                self._drop(pair)
                return
            plain.setblocking(False)
            pair.plain = plain
            self._sockets.add(plain)
            self.sel.register(plain, selectors.EVENT_READ, lambda mask: self._on_plain(pair, mask))
        self._update(pair)

    def _on_tls(self, pair: _Pair, mask: int) -> None:
        if pair.handshaking:
            self._handshake(pair)
            return
        if mask & selectors.EVENT_READ and not pair.tls_eof:
            while True:
                try:
                    data = pair.tls.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                    break
                except (ssl.SSLError, OSError):
                    data = b""
                if not data:
                    pair.tls_eof = True
                    break
                pair.to_plain += data
                if not pair.tls.pending():
                    break
        if mask & selectors.EVENT_WRITE or pair.to_tls:
            self._flush(pair, pair.tls, pair.to_tls)
        if pair.to_plain and pair.plain is not None:
            self._flush(pair, pair.plain, pair.to_plain)
        self._update(pair)

    def _on_plain(self, pair: _Pair, mask: int) -> None:
        if mask & selectors.EVENT_READ and not pair.plain_eof:
            try:
                data = pair.plain.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                pair.plain_eof = True
            elif data:
                pair.to_tls += data
        if pair.to_plain:
            self._flush(pair, pair.plain, pair.to_plain)
        if pair.to_tls:
            self._flush(pair, pair.tls, pair.to_tls)
        self._update(pair)

    def _flush(self, pair: _Pair, sock, buffer: bytearray) -> None:
        while buffer:
            try:
                sent = sock.send(buffer)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET) or isinstance(exc, ssl.SSLError):
                    buffer.clear()
                    pair.tls_eof = pair.plain_eof = True
                    return
                raise
            del buffer[:sent]

    def _update(self, pair: _Pair) -> None:
        """Re-arm the selector for this pair, or drop it when both directions are done."""
        if pair.tls.fileno() == -1:
            return
        if pair.handshaking:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pair.want_write else 0)
            self.sel.modify(pair.tls, events, self.sel.get_key(pair.tls).data)
            return
        # One side ended: deliver what is left to the other side, then drop the pair.
        if (pair.tls_eof and not pair.to_plain) or (pair.plain_eof and not pair.to_tls):
            self._drop(pair)
            return
        events = (0 if pair.tls_eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if pair.to_tls else 0)
        self.sel.modify(pair.tls, events or selectors.EVENT_WRITE, self.sel.get_key(pair.tls).data)
        if pair.plain is not None:
            events = (0 if pair.plain_eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if pair.to_plain else 0)
            self.sel.modify(pair.plain, events or selectors.EVENT_WRITE, self.sel.get_key(pair.plain).data)

    def _drop(self, pair: _Pair) -> None:
        self._forget(pair.tls)
        if pair.plain is not None:
            self._forget(pair.plain)
