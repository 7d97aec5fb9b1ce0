"""The ``puka`` command line: publish, consume, get, declare, delete, bind -- and watch the frames.

Theory of operation: :func:`main` parses the command line (argparse subcommands), opens one
:class:`puka.Client` on ``--url`` (else ``$AMQP_URL``, else ``amqp:///``), runs the
subcommand with puka's blocking ``wait``, and closes the connection.  Data (message bodies,
what was declared) goes to stdout; progress, frames, spans and errors go to stderr.

Every failure is one line on stderr and an exit code -- never a traceback (``--debug`` shows
it), never the password:

==== ==================================================================================
0    done
1    the broker refused an operation (an AMQP error: NotFound, PreconditionFailed, NoRoute,
     a nacked publish...)
2    usage: bad arguments, a malformed URL, ``--trace`` without OpenTelemetry
3    connection: cannot connect (refused, unresolvable, timed out, wrong credentials, unknown
     vhost) or the connection was lost
4    ``get``: the queue was empty
130  interrupted (Ctrl-C)
141  stdout was closed by its reader (e.g. ``| head``)
==== ==================================================================================

``tap COMMAND ...`` runs another command with :class:`puka.tracing.FrameLogger` installed and
prints every frame, decoded, in both directions, on stderr (credentials are shown as ``***``).
``--trace`` installs :class:`puka.tracing.OpenTelemetryMiddleware` with an SDK tracer provider
and a console exporter (on stderr); it needs ``pip install 'puka[otel]'``.

Installed as the ``puka`` console script (``puka = "puka.cli:main"``) and as ``python -m puka``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn, TextIO

PROG = "puka"
DEFAULT_URL = "amqp:///"

EXIT_OK = 0
EXIT_AMQP = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_EMPTY = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: Seconds to wait for the broker's close-ok when the command is done.
CLOSE_TIMEOUT = 5.0
#: Seconds between progress lines of long runs (also printed at every 10%).
PROGRESS_INTERVAL = 1.0

EXIT_CODES = """\
exit status:
  0    done
  1    the broker refused an operation (NotFound, PreconditionFailed, NoRoute...)
  2    usage: bad arguments, a malformed URL, --trace without OpenTelemetry
  3    connection: refused, unresolvable, timed out, wrong credentials, unknown vhost, lost
  4    get: the queue was empty
  130  interrupted (Ctrl-C)
  141  stdout was closed by its reader (e.g. '| head')
"""


class CliError(Exception):
    """A failure to report as one line with an exit code."""

    def __init__(self, code: int, message: str, prog: str = PROG) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.prog = prog


# --- argument parsing -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(EXIT_USAGE, "%s (see '%s --help')" % (message, self.prog), self.prog)


_INT = re.compile(r"[+-]?[0-9]+\Z")


def _value(text: str) -> Any:
    """A header or argument value: an int when it looks like one, else the string."""
    return int(text) if _INT.match(text) else text


#: Message properties whose values are strings even when they look like numbers.
_STRING_PROPERTIES = frozenset(
    (
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "type_",
        "user_id",
        "app_id",
        "cluster_id",
    )
)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, got %r" % text)
    return key, value


def _header(text: str) -> tuple[str, Any]:
    """A --header: typed as an int when it looks like one, except string properties."""
    key, value = _pair(text)
    return key, value if key in _STRING_PROPERTIES else _value(value)


def _argument(text: str) -> tuple[str, Any]:
    """An --arg: ints and true/false are typed."""
    key, value = _pair(text)
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, _value(value)


def _whole_number(lowest: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``lowest``."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
        if number < lowest:
            raise argparse.ArgumentTypeError("must be at least %d, not %d" % (lowest, number))
        return number

    return parse


_positive = _whole_number(1)
_non_negative = _whole_number(0)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return seconds


def _global_options() -> _Parser:
    """The options every command takes, before or after its name (defaults resolved later)."""
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("connection and diagnostics")
    group.add_argument(
        "--url", help="the broker, amqp[s]://user:password@host:port/vhost (default: $AMQP_URL, else amqp:///)"
    )
    group.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="to connect: TCP, TLS and the AMQP handshake (default 10)"
    )
    group.add_argument(
        "--trace",
        action="store_true",
        help="print OpenTelemetry spans on stderr (needs pip install 'puka[otel]')",
    )
    group.add_argument("--debug", action="store_true", help="show tracebacks and puka's log messages")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="A command line for RabbitMQ (AMQP 0-9-1), built on puka. Message bodies and results "
        "go to stdout; progress, frames, spans and errors to stderr.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def command(name: str, help: str, epilog: str = EXIT_CODES) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, epilog=epilog, formatter_class=formatter, parents=[common]
        )

    publish = command("publish", "publish a message (confirmed by the broker)")
    publish.add_argument("exchange", metavar="EXCHANGE", help="the exchange ('' for the default exchange)")
    publish.add_argument("routing_key", metavar="ROUTING_KEY", help="the routing key (a queue, for '')")
    publish.add_argument("body", metavar="BODY", nargs="?", help="the message body (default: read stdin)")
    publish.add_argument("--count", type=_positive, default=1, metavar="N", help="publish N copies (default 1)")
    publish.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a header (repeatable); properties such as content_type, message_id, priority, "
        "expiration go to the message's properties; values that look like integers are sent "
        "as integers, except to string properties (message_id, expiration...)",
    )
    publish.add_argument("--mandatory", action="store_true", help="fail (exit 1) when no queue takes the message")
    publish.add_argument("--persistent", action="store_true", help="delivery_mode 2: survive a broker restart")
    publish.add_argument(
        "--window",
        type=_positive,
        default=1000,
        metavar="N",
        help="with --count: at most N messages awaiting their confirm (default 1000)",
    )
    publish.set_defaults(run=cmd_publish)

    consume = command("consume", "consume messages from a queue and print them")
    consume.add_argument("queue", metavar="QUEUE")
    consume.add_argument("--count", type=_positive, metavar="N", help="stop after N messages (default: never)")
    consume.add_argument("--no-ack", action="store_true", help="the broker forgets messages as it sends them")
    consume.add_argument(
        "--prefetch", type=_non_negative, default=100, metavar="N", help="unacknowledged messages at most (default 100)"
    )
    consume.add_argument("--quiet", "-q", action="store_true", help="do not print the messages")
    consume.set_defaults(run=cmd_consume)

    get = command(
        "get",
        "fetch one message from a queue and print it",
        epilog=EXIT_CODES.replace("get: the queue", "the queue"),
    )
    get.add_argument("queue", metavar="QUEUE")
    get.add_argument("--no-ack", action="store_true", help="do not acknowledge (the broker forgets it at once)")
    get.set_defaults(run=cmd_get)

    declare = command("declare", "declare a queue or an exchange")
    kinds = declare.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=_Parser)
    queue = kinds.add_parser(
        "queue", help="declare a queue", parents=[common], epilog=EXIT_CODES, formatter_class=formatter
    )
    queue.add_argument("name", metavar="NAME")
    queue.add_argument("--durable", action="store_true", help="survives a broker restart")
    queue.add_argument("--exclusive", action="store_true", help="only this connection may use it")
    queue.add_argument("--auto-delete", action="store_true", help="deleted when its last consumer goes")
    queue.add_argument(
        "--arg",
        type=_argument,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an x-argument (repeatable), e.g. x-queue-type=quorum, x-message-ttl=60000; "
        "integers and true/false are typed",
    )
    queue.add_argument("--passive", action="store_true", help="only check that it exists (exit 1 when not)")
    queue.set_defaults(run=cmd_declare_queue)
    exchange = kinds.add_parser(
        "exchange", help="declare an exchange", parents=[common], epilog=EXIT_CODES, formatter_class=formatter
    )
    exchange.add_argument("name", metavar="NAME")
    exchange.add_argument(
        "--type", default="direct", metavar="TYPE", help="direct (default), fanout, topic, headers or a plugin's type"
    )
    exchange.add_argument("--durable", action="store_true", help="survives a broker restart")
    exchange.add_argument("--auto-delete", action="store_true", help="deleted when its last binding goes")
    exchange.add_argument(
        "--arg", type=_argument, action="append", default=[], metavar="KEY=VALUE", help="an x-argument (repeatable)"
    )
    exchange.add_argument("--passive", action="store_true", help="only check that it exists (exit 1 when not)")
    exchange.set_defaults(run=cmd_declare_exchange)

    delete = command("delete", "delete a queue or an exchange")
    kinds = delete.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=_Parser)
    queue = kinds.add_parser(
        "queue", help="delete a queue", parents=[common], epilog=EXIT_CODES, formatter_class=formatter
    )
    queue.add_argument("name", metavar="NAME")
    queue.add_argument("--if-unused", action="store_true", help="only when it has no consumers (else exit 1)")
    queue.add_argument("--if-empty", action="store_true", help="only when it has no messages (else exit 1)")
    queue.set_defaults(run=cmd_delete_queue)
    exchange = kinds.add_parser(
        "exchange", help="delete an exchange", parents=[common], epilog=EXIT_CODES, formatter_class=formatter
    )
    exchange.add_argument("name", metavar="NAME")
    exchange.add_argument("--if-unused", action="store_true", help="only when it has no bindings (else exit 1)")
    exchange.set_defaults(run=cmd_delete_exchange)

    for name, verb in (("bind", "bind"), ("unbind", "unbind")):
        sub = command(name, "%s a queue %s an exchange" % (verb, "to" if name == "bind" else "from"))
        sub.add_argument("queue", metavar="QUEUE")
        sub.add_argument("exchange", metavar="EXCHANGE")
        sub.add_argument("routing_key", metavar="ROUTING_KEY", nargs="?", default="")
        sub.add_argument(
            "--arg", type=_argument, action="append", default=[], metavar="KEY=VALUE", help="a binding argument"
        )
        sub.set_defaults(run=cmd_bind if name == "bind" else cmd_unbind)

    tap = command(
        "tap",
        "run another command and print every AMQP frame, both directions, on stderr",
        epilog="example: %s tap declare queue q\n\n%s" % (PROG, EXIT_CODES),
    )
    tap.add_argument("tapped", nargs=argparse.REMAINDER, metavar="COMMAND ...", help="the command to run")
    return parser


_GLOBALS = ("url", "timeout", "trace", "debug")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; ``tap COMMAND ...`` parses COMMAND and sets ``tap``."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    args.tap = False
    if args.command == "tap":
        if not args.tapped:
            raise CliError(EXIT_USAGE, "which command? e.g. '%s tap declare queue q'" % PROG, PROG + " tap")
        if args.tapped[0] == "tap":
            raise CliError(EXIT_USAGE, "tap once is enough", PROG + " tap")
        inner = parser.parse_args(args.tapped)
        for name in _GLOBALS:
            if not hasattr(inner, name) and hasattr(args, name):
                setattr(inner, name, getattr(args, name))
        inner.tap = True
        args = inner
    args.url = getattr(args, "url", None) or os.environ.get("AMQP_URL") or DEFAULT_URL
    args.timeout = getattr(args, "timeout", None)
    args.trace = getattr(args, "trace", False)
    args.debug = getattr(args, "debug", False)
    return args


# --- output ----------------------------------------------------------------------------------------


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _body_text(body: Any) -> str:
    """The body as text: UTF-8 when it is, else its repr."""
    data = bytes(body)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)


def _plural(count: int, word: str) -> str:
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


class Progress:
    """Progress lines on stderr every 10% and every second; a final rate line."""

    def __init__(self, verb: str, total: int | None, stream: TextIO | None = None) -> None:
        self.verb = verb
        self.total = total
        self.stream = stream
        self.started = time.monotonic()
        self.last = self.started
        self.step = max(1, total // 10) if total and total >= 20 else 0
        self.next = self.step

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def _rate(self, done: int, now: float) -> float:
        elapsed = now - self.started
        return done / elapsed if elapsed > 0 else 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.total is not None and done >= self.total:
            return
        if (self.step and done >= self.next) or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            if self.step:
                self.next = (done // self.step + 1) * self.step
            if self.total:
                self._write(
                    "%s %d/%d (%d%%), %.0f msg/s"
                    % (self.verb, done, self.total, 100 * done // self.total, self._rate(done, now))
                )
            else:
                self._write("%s %d, %.0f msg/s" % (self.verb, done, self._rate(done, now)))

    def finish(self, done: int) -> None:
        now = time.monotonic()
        self._write(
            "%s %s in %.3f s (%.0f msg/s)"
            % (self.verb, _plural(done, "message"), now - self.started, self._rate(done, now))
        )


# --- the commands ----------------------------------------------------------------------------------


def cmd_publish(client: Any, args: argparse.Namespace) -> int:
    if args.body is not None:
        body = os.fsencode(args.body)
    else:
        stdin = sys.stdin
        if stdin is not None and stdin.isatty():
            _say("%s: reading the message body from the terminal (end it with Ctrl-D)" % PROG)
        body = stdin.buffer.read() if stdin is not None else b""
    headers = dict(args.header)
    if args.persistent:
        headers["delivery_mode"] = 2
    count = args.count
    progress = Progress("published", count) if count > 1 else None
    publish = client.basic_publish
    wait = client.wait
    exchange, routing_key, mandatory = args.exchange, args.routing_key, args.mandatory
    window = args.window
    inflight: deque[int] = deque()
    try:  # the first publish encodes the headers: a bad one is a usage error
        inflight.append(publish(exchange, routing_key, body, headers, mandatory))
    except (TypeError, ValueError) as exc:
        raise CliError(EXIT_USAGE, "cannot publish with these headers: %s" % exc) from exc
    done = 0
    for _ in range(count - 1):
        inflight.append(publish(exchange, routing_key, body, headers, mandatory))
        if len(inflight) >= window:
            wait(inflight.popleft())
            done += 1
            if progress is not None:
                progress.update(done)
    while inflight:
        wait(inflight.popleft())
        done += 1
        if progress is not None:
            progress.update(done)
    if progress is not None:
        progress.finish(done)
    return EXIT_OK


def cmd_consume(client: Any, args: argparse.Namespace) -> int:
    count = args.count
    quiet = args.quiet
    no_ack = args.no_ack
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if count is None and not quiet and reconfigure is not None:
        reconfigure(line_buffering=True)  # show each message as it comes, even through a pipe
    progress = Progress("consumed", count) if count is not None or quiet else None
    consume = client.basic_consume(queue=args.queue, prefetch_count=args.prefetch, no_ack=no_ack)
    wait = client.wait
    ack = client.basic_ack
    write = sys.stdout.write
    done = 0
    while count is None or done < count:
        message = wait(consume)
        done += 1
        if not quiet:
            write(_body_text(message["body"]) + "\n")
        if not no_ack:
            ack(message)
        if progress is not None:
            progress.update(done)
    sys.stdout.flush()
    client.wait(client.basic_cancel(consume))
    if progress is not None:
        progress.finish(done)
    return EXIT_OK


def cmd_get(client: Any, args: argparse.Namespace) -> int:
    message = client.wait(client.basic_get(queue=args.queue, no_ack=args.no_ack))
    if message.get("empty"):
        _say("%s: queue %r is empty" % (PROG, args.queue))
        return EXIT_EMPTY
    sys.stdout.write(_body_text(message["body"]) + "\n")
    sys.stdout.flush()
    if not args.no_ack:
        client.basic_ack(message)
    return EXIT_OK


def cmd_declare_queue(client: Any, args: argparse.Namespace) -> int:
    result = client.wait(
        client.queue_declare(
            queue=args.name,
            durable=args.durable,
            exclusive=args.exclusive,
            auto_delete=args.auto_delete,
            arguments=dict(args.arg),
            passive=args.passive,
        )
    )
    print(
        "queue %s: %s, %s"
        % (result["queue"], _plural(result["message_count"], "message"), _plural(result["consumer_count"], "consumer"))
    )
    return EXIT_OK


def cmd_declare_exchange(client: Any, args: argparse.Namespace) -> int:
    client.wait(
        client.exchange_declare(
            exchange=args.name,
            type=args.type,
            durable=args.durable,
            auto_delete=args.auto_delete,
            arguments=dict(args.arg),
            passive=args.passive,
        )
    )
    print("exchange %s: %s" % (args.name, args.type if not args.passive else "exists"))
    return EXIT_OK


def cmd_delete_queue(client: Any, args: argparse.Namespace) -> int:
    result = client.wait(client.queue_delete(queue=args.name, if_unused=args.if_unused, if_empty=args.if_empty))
    print("deleted queue %s (%s)" % (args.name, _plural(result["message_count"], "message")))
    return EXIT_OK


def cmd_delete_exchange(client: Any, args: argparse.Namespace) -> int:
    client.wait(client.exchange_delete(exchange=args.name, if_unused=args.if_unused))
    print("deleted exchange %s" % args.name)
    return EXIT_OK


def cmd_bind(client: Any, args: argparse.Namespace) -> int:
    client.wait(client.queue_bind(args.queue, args.exchange, args.routing_key, dict(args.arg)))
    print("bound queue %s to exchange %s with key %r" % (args.queue, args.exchange, args.routing_key))
    return EXIT_OK


def cmd_unbind(client: Any, args: argparse.Namespace) -> int:
    client.wait(client.queue_unbind(args.queue, args.exchange, args.routing_key, dict(args.arg)))
    print("unbound queue %s from exchange %s with key %r" % (args.queue, args.exchange, args.routing_key))
    return EXIT_OK


# --- middleware -----------------------------------------------------------------------------------


def _frame_logger() -> Any:
    """FrameLogger on a private logger (outside logging's registry) that writes frames to stderr."""
    from .tracing import FrameLogger

    logger = logging.Logger("puka.cli.tap", logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return FrameLogger(logger)


def _tracing() -> tuple[Any, Any]:
    """The OpenTelemetry middleware and its SDK tracer provider (console exporter on stderr)."""
    import importlib.util

    hint = "--trace needs the OpenTelemetry SDK: pip install 'puka[otel]'"
    try:
        found = importlib.util.find_spec("opentelemetry.sdk") is not None
    except ImportError:
        found = False
    if not found:
        raise CliError(EXIT_USAGE, hint)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        from .tracing.otel import OpenTelemetryMiddleware
    except ImportError as exc:
        raise CliError(EXIT_USAGE, "%s (%s)" % (hint, exc)) from None
    provider = TracerProvider(resource=Resource.create({"service.name": PROG}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    return OpenTelemetryMiddleware(tracer_provider=provider), provider


# --- running ---------------------------------------------------------------------------------------


def _secrets(url: str, client: Any) -> list[str]:
    """Password spellings that must not appear in a message."""
    import urllib.parse

    found = set()
    params = getattr(client, "params", None)
    if params is not None:
        if params.password and params.password != params.username:
            found.add(params.password)
    else:
        match = re.match(r"[^:/?#]*://([^@/?#]*):([^@/?#]*)@", url)
        if match and match.group(2) and match.group(2) != match.group(1):
            found.add(match.group(2))
            found.add(urllib.parse.unquote(match.group(2), errors="replace"))
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _one_line(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def _describe(exc: BaseException) -> str:
    from .exceptions import AMQPError

    text = str(exc)
    if isinstance(exc, AMQPError) or not text:
        name = type(exc).__name__
        return "%s: %s" % (name, text) if text else name
    return text


def _run(args: argparse.Namespace) -> int:
    import puka

    middleware: list[Any] = []
    provider = None
    if args.tap:
        middleware.append(_frame_logger())
    if args.trace:
        tracer, provider = _tracing()
        middleware.append(tracer)
    client: Any = None
    secrets = _secrets(args.url, None)
    try:
        try:
            client = puka.Client(
                args.url,
                middleware=middleware,
                client_properties={"connection_name": "%s %s" % (PROG, args.command)},
                connection_timeout=args.timeout,
            )
        except (ValueError, TypeError) as exc:
            raise CliError(EXIT_USAGE, "bad URL: %s" % _one_line(str(exc), secrets)) from None
        secrets = _secrets(args.url, client)
        where = client.params.redacted_url()
        try:
            client.wait(client.connect())
        except (puka.AMQPError, OSError) as exc:
            raise CliError(
                EXIT_CONNECTION, "cannot connect to %s: %s" % (where, _one_line(_describe(exc), secrets))
            ) from exc
        try:
            code = args.run(client, args)
        except puka.ConnectionBroken as exc:
            raise CliError(
                EXIT_CONNECTION, "connection to %s lost: %s" % (where, _one_line(_describe(exc), secrets))
            ) from exc
        except (CliError, BrokenPipeError):
            raise  # already one line / stdout's reader went away (main() stops quietly)
        except (puka.AMQPError, puka.PromiseFinished) as exc:
            raise CliError(EXIT_AMQP, _one_line(_describe(exc), secrets)) from exc
        except OSError as exc:
            raise CliError(
                EXIT_CONNECTION, "connection to %s failed: %s" % (where, _one_line(str(exc), secrets))
            ) from exc
        except ValueError as exc:  # e.g. a header puka cannot encode
            raise CliError(EXIT_USAGE, _one_line(str(exc), secrets)) from exc
        except Exception as exc:
            if args.debug:
                raise
            message = "unexpected %s: %s (run with --debug for the traceback)" % (type(exc).__name__, exc)
            raise CliError(EXIT_AMQP, _one_line(message, secrets)) from exc
        _close(client)
        return code  # type: ignore[no-any-return]
    except Exception:
        if client is not None:
            _close(client)
        raise
    finally:
        if provider is not None:
            provider.shutdown()


def _close(client: Any) -> None:
    """Close politely; a connection that is already gone is fine."""
    try:
        client.wait(client.close(), timeout=CLOSE_TIMEOUT + 1)
    except Exception:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module doc)."""
    if argv is None:
        argv = sys.argv[1:]
    debug = False
    quiet = logging.NullHandler()
    puka_log = logging.getLogger("puka")
    try:
        try:
            args = parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        debug = args.debug
        if debug:
            logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        else:
            # puka logs what it also raises (a closed connection...): the one error line says it.
            # (A handler here keeps logging's last resort from printing; records still propagate.)
            puka_log.addHandler(quiet)
        return _run(args)
    except CliError as exc:
        if debug and exc.__cause__ is not None:
            import traceback

            traceback.print_exception(exc.__cause__)
        _say("%s: error: %s" % (exc.prog, exc.message))
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. '| head'): stop quietly, and keep Python from complaining at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if debug:
            raise
        _say("%s: error: unexpected %s: %s (run with --debug for the traceback)" % (PROG, type(exc).__name__, exc))
        return EXIT_AMQP
    finally:
        puka_log.removeHandler(quiet)


if __name__ == "__main__":
    sys.exit(main())
