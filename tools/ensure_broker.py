#!/usr/bin/env python3
"""Make sure a RabbitMQ broker answers AMQP, or fail loudly.

With ``AMQP_URL`` set, that broker must answer.  Otherwise the local one on
127.0.0.1:5672 is used: started with ``rabbitmq-server -detached`` when it is
not answering, after ``apt-get install -y rabbitmq-server`` when it is not
installed.  "Answers" means an AMQP 0-9-1 connection.start comes back for the
protocol header, not merely an open port.

    python tools/ensure_broker.py        # exit 0 when a broker answers
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
START_TIMEOUT = 120.0


def broker_address(url: str | None = None) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url or os.environ.get("AMQP_URL") or DEFAULT_URL)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default_port


def answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when an AMQP 0-9-1 server greets the protocol header with connection.start."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            data = b""
            while len(data) < 11:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                data += chunk
            # frame type 1 (method) on channel 0, class 10 method 10: connection.start
            return data[0] == 1 and data[1:3] == b"\x00\x00" and data[7:11] == b"\x00\x0a\x00\x0a"
    except OSError:
        return False


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def ensure() -> tuple[str, int]:
    host, port = broker_address()
    if answers(host, port):
        return host, port
    if os.environ.get("AMQP_URL"):
        raise SystemExit("AMQP_URL=%s: no AMQP broker answers there" % _redacted(os.environ["AMQP_URL"]))
    if shutil.which("rabbitmq-server") is None and not os.path.exists("/usr/sbin/rabbitmq-server"):
        if shutil.which("apt-get") is None:
            raise SystemExit("no broker on %s:%d and rabbitmq-server is not installed" % (host, port))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        print("+ apt-get install -y rabbitmq-server", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], check=True, env=env)
    server = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    _run([server, "-detached"])
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers(host, port):
            return host, port
        time.sleep(1.0)
    raise SystemExit("started rabbitmq-server but nothing answered on %s:%d within %ds" % (host, port, START_TIMEOUT))


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def main() -> int:
    host, port = ensure()
    print("AMQP broker answers on %s:%d" % (host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
