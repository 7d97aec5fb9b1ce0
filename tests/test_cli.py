"""The ``puka`` command line (``python -m puka``), run in subprocesses against the broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.parse

import pytest
from faults import wait_until

import puka
from puka import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A password that must never show up in any output.
SECRET = "Zebra-Quartz-7731"


def run_cli(*args: str, url: str | None = None, input: bytes | str | None = None, timeout: float = 60):
    """Run ``python -m puka ARGS``; stdout and stderr decoded (UTF-8, replacing)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("AMQP_URL", None)
    if url is not None:
        env["AMQP_URL"] = url
    if isinstance(input, str):
        input = input.encode("utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "puka", *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        env=env,
    )
    done.out = done.stdout.decode("utf-8", "replace")  # type: ignore[attr-defined]
    done.err = done.stderr.decode("utf-8", "replace")  # type: ignore[attr-defined]
    return done


def assert_ok(done) -> None:
    assert done.returncode == 0, "exit %d, stderr:\n%s" % (done.returncode, done.err)


def assert_one_line_error(done, code: int) -> str:
    """Exit ``code``, one line on stderr, no traceback, no password."""
    assert done.returncode == code, "exit %d (expected %d), stderr:\n%s" % (done.returncode, code, done.err)
    lines = done.err.splitlines()
    assert len(lines) == 1, done.err
    assert "Traceback" not in done.err
    assert SECRET not in done.err and SECRET not in done.out
    assert lines[0].startswith("puka")
    return lines[0]


def url_with(amqp_url: str, password: str | None = None, port: int | None = None) -> str:
    params = puka.parse_amqp_url(amqp_url)
    host = "[%s]" % params.host if ":" in params.host else params.host
    return "amqp://%s:%s@%s:%d/%s" % (
        urllib.parse.quote(params.username, safe=""),
        urllib.parse.quote(password if password is not None else params.password, safe=""),
        host,
        port if port is not None else params.port,
        urllib.parse.quote(params.vhost, safe=""),
    )


@pytest.fixture
def qname(client, name):
    """A queue name the test's commands create; deleted afterwards."""
    yield name
    client.wait(client.queue_delete(queue=name), raise_errors=False)


# --- round trips -----------------------------------------------------------------------------------


def test_declare_publish_get_consume_delete(amqp_url, client, qname):
    done = run_cli("declare", "queue", qname, url=amqp_url)
    assert_ok(done)
    assert done.out == "queue %s: 0 messages, 0 consumers\n" % qname

    assert_ok(run_cli("publish", "", qname, "hello wörld", url=amqp_url))
    assert_ok(run_cli("publish", "", qname, url=amqp_url, input="from stdin\n"))
    assert_ok(run_cli("publish", "", qname, url=amqp_url, input=b"\xff\x00binary"))
    assert client.wait(client.queue_declare(queue=qname, passive=True))["message_count"] == 3

    done = run_cli("get", qname, url=amqp_url)
    assert_ok(done)
    assert done.out == "hello wörld\n"
    done = run_cli("consume", qname, "--count", "2", url=amqp_url)
    assert_ok(done)
    assert done.out == "from stdin\n\n" + repr(b"\xff\x00binary") + "\n"

    done = run_cli("get", qname, url=amqp_url)
    assert done.returncode == cli.EXIT_EMPTY == 4
    assert done.out == ""
    assert "empty" in done.err and "Traceback" not in done.err

    done = run_cli("delete", "queue", qname, url=amqp_url)
    assert_ok(done)
    assert done.out == "deleted queue %s (0 messages)\n" % qname
    with pytest.raises(puka.NotFound):
        client.wait(client.queue_declare(queue=qname, passive=True))


def test_get_no_ack_and_acked_messages_leave_the_queue(amqp_url, client, qname):
    client.wait(client.queue_declare(queue=qname))
    for body in (b"one", b"two"):
        client.wait(client.basic_publish(exchange="", routing_key=qname, body=body))
    assert run_cli("get", "--no-ack", qname, url=amqp_url).out == "one\n"
    assert run_cli("consume", "--no-ack", "--count", "1", qname, url=amqp_url).out == "two\n"
    assert client.wait(client.queue_declare(queue=qname, passive=True))["message_count"] == 0


def test_headers_properties_and_persistence(amqp_url, client, qname):
    client.wait(client.queue_declare(queue=qname))
    done = run_cli(
        "publish",
        "",
        qname,
        "{}",
        "--header",
        "content_type=application/json",
        "--header",
        "x-attempt=3",
        "--header",
        "x-note=a=b",
        "--header",
        "correlation_id=42",
        "--header",
        "expiration=60000",
        "--header",
        "priority=5",
        "--persistent",
        url=amqp_url,
    )
    assert_ok(done)
    message = client.wait(client.basic_get(queue=qname, no_ack=True))
    assert message["body"] == b"{}"
    assert message["headers"] == {
        "content_type": "application/json",
        "delivery_mode": 2,
        "x-attempt": 3,
        "x-note": "a=b",
        "correlation_id": "42",  # string properties stay strings
        "expiration": "60000",
        "priority": 5,
    }


@pytest.mark.parametrize("header", ["priority=high", "delivery_mode=3", "x-huge=99999999999999999999999"])
def test_headers_puka_cannot_encode_are_usage_errors(amqp_url, header):
    done = run_cli("publish", "", "nowhere", "b", "--header", header, url=amqp_url)
    assert "cannot publish with these headers" in assert_one_line_error(done, cli.EXIT_USAGE)


def test_exchange_declare_bind_publish_delete(amqp_url, client, qname):
    exchange = qname + "-x"
    try:
        assert_ok(run_cli("declare", "exchange", exchange, "--type", "topic", url=amqp_url))
        assert_ok(run_cli("declare", "queue", qname, url=amqp_url))
        done = run_cli("bind", qname, exchange, "orders.*", url=amqp_url)
        assert_ok(done)
        assert_ok(run_cli("publish", exchange, "orders.new", "routed", url=amqp_url))
        assert_ok(run_cli("publish", exchange, "invoices.new", "dropped", url=amqp_url))
        assert run_cli("get", qname, url=amqp_url).out == "routed\n"
        assert run_cli("get", qname, url=amqp_url).returncode == cli.EXIT_EMPTY
        assert_ok(run_cli("unbind", qname, exchange, "orders.*", url=amqp_url))
        done = run_cli("publish", exchange, "orders.new", "x", "--mandatory", url=amqp_url)
        assert "NO_ROUTE" in assert_one_line_error(done, cli.EXIT_AMQP)
        assert_ok(run_cli("delete", "exchange", exchange, url=amqp_url))
        # The exchange is gone: publishing to it is an AMQP error.
        done = run_cli("publish", exchange, "orders.new", "x", url=amqp_url)
        assert "NOT_FOUND" in assert_one_line_error(done, cli.EXIT_AMQP)
    finally:
        client.wait(client.exchange_delete(exchange=exchange), raise_errors=False)


def test_queue_arguments_are_typed(amqp_url, client, qname):
    done = run_cli(
        "declare",
        "queue",
        qname,
        "--arg",
        "x-message-ttl=60000",
        "--arg",
        "x-max-length=10",
        "--arg",
        "x-single-active-consumer=true",
        "--arg",
        "x-queue-type=classic",
        url=amqp_url,
    )
    assert_ok(done)  # the broker refuses a TTL given as a string
    # Redeclaring with the same (typed) arguments is accepted; other ones are not.
    arguments = {
        "x-message-ttl": 60000,
        "x-max-length": 10,
        "x-single-active-consumer": True,
        "x-queue-type": "classic",
    }
    client.wait(client.queue_declare(queue=qname, arguments=arguments))
    with pytest.raises(puka.PreconditionFailed):
        client.wait(client.queue_declare(queue=qname, arguments={"x-message-ttl": 1000}))
    done = run_cli("declare", "queue", qname, "--passive", url=amqp_url)
    assert_ok(done)


# --- errors and exit codes -------------------------------------------------------------------------


def test_amqp_errors_are_one_line_and_exit_1(amqp_url, client, name):
    done = run_cli("get", name, url=amqp_url)
    line = assert_one_line_error(done, cli.EXIT_AMQP)
    assert "NOT_FOUND" in line and name in line

    done = run_cli("consume", name, url=amqp_url)
    assert "NOT_FOUND" in assert_one_line_error(done, cli.EXIT_AMQP)

    done = run_cli("declare", "queue", name, "--passive", url=amqp_url)
    assert "NOT_FOUND" in assert_one_line_error(done, cli.EXIT_AMQP)

    client.wait(client.queue_declare(queue=name))
    try:
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"keep me"))
        done = run_cli("delete", "queue", name, "--if-empty", url=amqp_url)
        assert "PRECONDITION_FAILED" in assert_one_line_error(done, cli.EXIT_AMQP)
        assert client.wait(client.queue_declare(queue=name, passive=True))["message_count"] == 1
    finally:
        client.wait(client.queue_delete(queue=name))


def test_connection_refused_exits_3(amqp_url):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_cli("--url", "amqp://guest:%s@127.0.0.1:%d/" % (SECRET, port), "get", "q")
    line = assert_one_line_error(done, cli.EXIT_CONNECTION)
    assert "refused" in line.lower()
    done = run_cli("get", "q", url="amqp://guest:guest@127.0.0.1:1/")
    assert_one_line_error(done, cli.EXIT_CONNECTION)


def test_wrong_password_exits_3_without_the_password(amqp_url):
    done = run_cli("declare", "queue", "never-declared", url=url_with(amqp_url, password=SECRET))
    line = assert_one_line_error(done, cli.EXIT_CONNECTION)
    assert "ACCESS_REFUSED" in line
    assert "***" in line  # the URL is shown, redacted


def test_unknown_vhost_exits_3(amqp_url):
    params = puka.parse_amqp_url(amqp_url)
    url = "amqp://%s:%s@%s:%d/no-such-vhost-%s" % (params.username, params.password, params.host, params.port, SECRET)
    done = run_cli("get", "q", url=url)
    assert done.returncode == cli.EXIT_CONNECTION, done.err
    assert len(done.err.splitlines()) == 1 and "Traceback" not in done.err


@pytest.mark.parametrize(
    "url",
    [
        "http://guest:%s@127.0.0.1/" % SECRET,
        "amqp://guest:%s@127.0.0.1:99999/" % SECRET,
        "amqp://guest:%s%%ff@127.0.0.1/" % SECRET,
        "amqp://guest:%s@127.0.0.1/?nonsense=1" % SECRET,
        "amqp://guest:%s@[::1/" % SECRET,
    ],
)
def test_bad_urls_exit_2_without_the_password(url):
    done = run_cli("--url", url, "get", "q")
    line = assert_one_line_error(done, cli.EXIT_USAGE)
    assert "URL" in line


def test_connection_timeout_exits_3():
    with socket.socket() as server:  # accepts TCP connections, never speaks AMQP
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        # (run_cli's own ceiling, 60 s, fails the test if the command hangs.)
        done = run_cli("--timeout", "0.5", "--url", "amqp://guest:%s@127.0.0.1:%d/" % (SECRET, port), "get", "q")
    line = assert_one_line_error(done, cli.EXIT_CONNECTION)
    assert "timed out after 0.5s" in line


@pytest.mark.parametrize(
    "args,hint",
    [
        ([], "(see 'puka --help')"),
        (["frobnicate"], "(see 'puka --help')"),
        (["publish"], "(see 'puka publish --help')"),
        (["publish", "", "q", "--count", "0"], "(see 'puka publish --help')"),
        (["publish", "", "q", "--header", "no-equals-sign"], "(see 'puka publish --help')"),
        (["consume", "q", "--prefetch", "-1"], "(see 'puka consume --help')"),
        (["declare"], "(see 'puka declare --help')"),
        (["declare", "table", "x"], "(see 'puka declare --help')"),
        (["--timeout", "soon", "get", "q"], "(see 'puka --help')"),
        (["tap"], "which command? e.g. 'puka tap declare queue q'"),
        (["tap", "tap", "get", "q"], "tap once is enough"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, hint):
    done = run_cli(*args, url="amqp://guest:guest@127.0.0.1:1/")
    line = assert_one_line_error(done, cli.EXIT_USAGE)
    assert line.endswith(hint), line


def test_help_documents_the_exit_codes():
    done = run_cli("--help")
    assert_ok(done)
    for command in ("publish", "consume", "get", "declare", "delete", "tap"):
        assert command in done.out
    assert "exit status" in done.out and "130" in done.out
    done = run_cli("get", "--help")
    assert_ok(done)
    assert "4    the queue was empty" in done.out


def test_main_in_process_returns_the_exit_code(capsys):
    assert cli.main(["--url", "amqp://guest:%s@127.0.0.1:1/" % SECRET, "get", "q"]) == cli.EXIT_CONNECTION
    assert cli.main(["frobnicate"]) == cli.EXIT_USAGE
    assert cli.main(["--help"]) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out
    assert "Traceback" not in captured.err


def test_ctrl_c_exits_130_quietly(amqp_url, client, qname):
    client.wait(client.queue_declare(queue=qname))
    env = dict(os.environ, PYTHONPATH=ROOT, AMQP_URL=amqp_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "puka", "consume", qname],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )

    def consuming():
        assert process.poll() is None, process.stderr.read()
        return client.wait(client.queue_declare(queue=qname, passive=True))["consumer_count"] > 0

    try:
        assert wait_until(consuming, timeout=20, interval=0.05), "the consumer never started"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == cli.EXIT_INTERRUPTED == 130
    assert err == b"" and out == b""


def test_closed_stdout_exits_141_quietly_and_leaves_the_message(amqp_url, client, qname):
    client.wait(client.queue_declare(queue=qname))
    client.wait(client.basic_publish(exchange="", routing_key=qname, body=b"first"))
    env = dict(os.environ, PYTHONPATH=ROOT, AMQP_URL=amqp_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "puka", "consume", qname],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout.readline() == b"first\n"  # as '| head -1' does
        process.stdout.close()
        client.wait(client.basic_publish(exchange="", routing_key=qname, body=b"second"))
        err = process.stderr.read()
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == cli.EXIT_BROKEN_PIPE == 141
    assert err == b""
    # 'second' could not be printed: it was not acknowledged, so it is back in the queue.
    assert client.wait(client.basic_get(queue=qname, no_ack=True))["body"] == b"second"


# --- long runs: progress and rate ------------------------------------------------------------------


def test_count_shows_progress_and_a_final_rate(amqp_url, client, qname):
    client.wait(client.queue_declare(queue=qname))
    done = run_cli("publish", "", qname, "payload", "--count", "2000", "--window", "300", url=amqp_url)
    assert_ok(done)
    lines = done.err.splitlines()
    assert "published 200/2000 (10%)" in done.err and "msg/s" in lines[0]
    assert len(lines) >= 9
    assert lines[-1].startswith("published 2000 messages in ") and lines[-1].endswith("msg/s)")
    assert client.wait(client.queue_declare(queue=qname, passive=True))["message_count"] == 2000

    done = run_cli("consume", qname, "--count", "2000", "--quiet", url=amqp_url)
    assert_ok(done)
    assert done.out == ""
    lines = done.err.splitlines()
    assert "consumed 200/2000 (10%)" in done.err
    assert lines[-1].startswith("consumed 2000 messages in ") and lines[-1].endswith("msg/s)")
    assert client.wait(client.queue_declare(queue=qname, passive=True))["message_count"] == 0


def test_consume_count_leaves_the_rest_in_the_queue(amqp_url, client, qname):
    client.wait(client.queue_declare(queue=qname))
    assert_ok(run_cli("publish", "", qname, "m", "--count", "50", url=amqp_url))
    done = run_cli("consume", qname, "--count", "20", "--prefetch", "30", url=amqp_url)
    assert_ok(done)
    assert done.out == "m\n" * 20
    # The prefetched but unprocessed messages went back to the queue.
    assert client.wait(client.queue_declare(queue=qname, passive=True))["message_count"] == 30


# --- tap and trace ---------------------------------------------------------------------------------


def test_tap_prints_every_frame_both_directions(amqp_url, qname):
    done = run_cli("tap", "declare", "queue", qname, url=amqp_url)
    assert_ok(done)
    assert done.out == "queue %s: 0 messages, 0 consumers\n" % qname
    lines = done.err.splitlines()
    names = [line.split()[3] for line in lines if line.startswith(("in ", "out "))]
    assert len(names) == len(lines), done.err
    for expected in ("connection.start-ok", "connection.open", "queue.declare", "connection.close"):
        assert expected in names
    assert [line for line in lines if line.startswith("in  ch 0 connection.start ")]
    assert [line for line in lines if line.startswith("in ") and " queue.declare-ok " in line]
    assert [line for line in lines if line.startswith("out") and "queue.declare " in line and qname in line]
    start_ok = next(line for line in lines if "connection.start-ok" in line)
    assert "'response': '***'" in start_ok


def test_tap_takes_options_after_tap_and_shows_errors(amqp_url, name):
    done = run_cli("tap", "--url", amqp_url, "get", name)
    assert done.returncode == cli.EXIT_AMQP
    assert "channel.close" in done.err and "NOT_FOUND" in done.err.splitlines()[-1]


def test_tap_never_shows_the_password(amqp_url):
    done = run_cli("tap", "get", "q", url=url_with(amqp_url, password=SECRET))
    assert done.returncode == cli.EXIT_CONNECTION
    assert "connection.start-ok" in done.err and "'response': '***'" in done.err
    assert SECRET not in done.err and SECRET not in done.out
    assert "Traceback" not in done.err


def test_trace_prints_spans(amqp_url, client, qname):
    # The test extra installs OpenTelemetry's SDK; without it, see the next test.
    client.wait(client.queue_declare(queue=qname))
    done = run_cli("--trace", "publish", "", qname, "traced", url=amqp_url)
    assert_ok(done)
    assert '"name": "publish %s"' % qname in done.err
    assert "SpanKind.PRODUCER" in done.err
    message = client.wait(client.basic_get(queue=qname, no_ack=True))
    assert message["headers"]["traceparent"].startswith("00-")
    trace_id = message["headers"]["traceparent"].split("-")[1]

    client.wait(client.basic_publish(exchange="", routing_key=qname, body=b"x", headers=message["headers"]))
    done = run_cli("consume", qname, "--count", "1", "--trace", url=amqp_url)
    assert_ok(done)
    assert done.out == "x\n"
    assert '"name": "process %s"' % qname in done.err
    assert '"trace_id": "0x%s"' % trace_id in done.err  # the consumer continued the producer's trace


def test_trace_without_opentelemetry_is_one_line_with_the_install_hint():
    # Hide OpenTelemetry from the CLI's process, whatever is installed.
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opentelemetry' or name.startswith('opentelemetry.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from puka.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--trace", "--url", "amqp://guest:%s@127.0.0.1:1/" % SECRET, "get", "q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    done.out, done.err = done.stdout, done.stderr
    line = assert_one_line_error(done, cli.EXIT_USAGE)
    assert "pip install 'puka[otel]'" in line
