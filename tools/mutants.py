#!/usr/bin/env python3
"""Mutation check: does the test suite notice small, realistic bugs in puka?

Each entry of :data:`MUTANTS` names one bug: a file, an exact source snippet
that must occur exactly once in it, its replacement, and the (small, fast)
selection of tests that ought to notice.  For each mutant the tool copies
``puka/``, ``tests/``, ``tools/``, ``pyproject.toml`` (and ``docs/``, ``examples/``,
``README.md``, which some tests read) from a snapshot of the work tree into a
temporary directory, applies the change there and runs
``pytest -x -q -p no:cacheprovider`` on the selection against that copy.  The
real tree is never modified.

Results, one line per mutant:

``caught by <test id>``  the first test that failed (``caught by timeout``: the whole run hung);
``SURVIVED``             every selected test passed: a gap in the tests, or an equivalent mutant;
``BROKEN``               the mutated module does not even import (caught, trivially);
``STALE``                the snippet is not in the file exactly once: the code moved, fix the entry;
``ERROR``                the run itself went wrong (no test collected, usage error...).

A selected test that no longer exists (renamed, moved) is reported as
``STALE TEST`` and left out; the others still run.  The kill rate counts
BROKEN as caught.

Mutants marked ``equivalent`` (no observable behaviour change; the reason is
given) are only checked for staleness, listed apart and left out of the kill rate.

Isolation: puka is installed editable into ``.venv``, so the runs set
``PYTHONPATH`` to the copy and start from it; the editable finder comes after
the path finder, so the copy wins.  This is verified, not assumed: before each
run the mutated module is imported in the same environment and its
``__file__`` checked, and a small pytest plugin (``-p _mutant_guard``, written
into the copy) checks every loaded ``puka`` module once collection is done and
stops the whole tool if one comes from anywhere else.

Before the mutants, a baseline run of the union of all selections on the
unmutated copy finds tests that already fail; they are deselected in the
mutant runs (and reported), so that a broken test never counts as a kill.

Usage (from the repository root, with the broker running)::

    .venv/bin/python tools/mutants.py                  # everything (several minutes)
    .venv/bin/python tools/mutants.py --list           # the mutants and their tests
    .venv/bin/python tools/mutants.py --check          # only look for STALE entries (no tests run)
    .venv/bin/python tools/mutants.py --only heartbeat_3x --only close_skips_ack_flush
    .venv/bin/python tools/mutants.py --also tests/test_fuzz.py          # add tests to every selection
    .venv/bin/python tools/mutants.py --show heartbeat_3x                # print the mutant as a diff

Other options: ``--no-baseline``, ``--timeout SECONDS`` (per mutant, default
240; each test also gets pytest-timeout's ``--timeout 30`` unless its module
sets its own), ``--run-equivalent``, ``--keep`` (keep the temporary trees).
Exit status: 0 when every mutant ran (survivors included), 1 when a mutant or
a selected test is STALE or a run ended in ERROR, 2 on an isolation failure.

Mutants run one after the other: the broker is shared.  Tests that
reconfigure or stop the broker (``test_blocked.py``, ``test_broker_restart.py``)
are never selected.  A busy shared broker can still fail a test by itself: when
a kill looks odd, run that mutant again with ``--only``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What a mutant's copy holds: tests import tools/ensure_broker.py, pyproject.toml has the pytest settings,
#: and some tests read the documentation and the examples.
COPIED = ("puka", "tests", "tools", "pyproject.toml", "README.md", "docs", "examples")
GUARD_MODULE = "_mutant_guard"
GUARD_EXIT = 99
DEFAULT_TIMEOUT = 240.0
#: Per-test timeout handed to pytest-timeout (test modules' own marks still win).
TEST_TIMEOUT = 30

_GUARD_SOURCE = '''\
"""Written by tools/mutants.py: checks the tests run against this copy; records failures."""

import os
import sys

import pytest

_ROOT = os.path.realpath(os.environ["MUTANT_ROOT"])
_REPORT = os.environ["MUTANT_REPORT"]


def _record(line):
    with open(_REPORT, "a", encoding="utf-8") as f:
        f.write(line + "\\n")


def pytest_collection_finish(session):
    for name, module in sorted(sys.modules.items()):
        if name != "puka" and not name.startswith("puka."):
            continue
        path = getattr(module, "__file__", None)
        if path is None:
            continue
        if not os.path.realpath(path).startswith(_ROOT + os.sep):
            _record("ISOLATION %s %s" % (name, path))
            pytest.exit("%s was imported from %s, not from the copy %s" % (name, path, _ROOT), returncode=GUARD_EXIT)


def pytest_collectreport(report):
    if report.failed:
        _record("COLLECT %s" % (report.nodeid or "<session>"))


def pytest_runtest_logreport(report):
    if report.failed:
        _record("FAILED %s%s" % (report.nodeid, "" if report.when == "call" else " (%s)" % report.when))
'''.replace("GUARD_EXIT", str(GUARD_EXIT))


@dataclass(frozen=True)
class Mutant:
    """One small bug: replace ``snippet`` (exactly once in ``file``) by ``replacement``."""

    name: str
    file: str
    snippet: str
    replacement: str
    #: pytest node ids or paths, relative to the repository root
    tests: tuple[str, ...]
    #: the bug, in words
    about: str
    #: further (snippet, replacement) edits in the same file, for one consistent bug
    more: tuple[tuple[str, str], ...] = ()
    #: why the mutant cannot change behaviour (None: it can)
    equivalent: str | None = None
    #: a gap already known (an earlier audit found no test catching it)
    known_gap: bool = False

    def edits(self) -> tuple[tuple[str, str], ...]:
        return ((self.snippet, self.replacement),) + self.more


# --- the mutants ------------------------------------------------------------------------------------

_T_CLIENT = "tests/test_client.py"
#: Tests written for the gaps of the earlier audit (the five ``known_gap`` mutants).
_REGRESSIONS = "tests/test_regressions.py"
#: The tests of the guarantees of docs/reliability.rst.
_GUARANTEES = "tests/test_guarantees.py"
#: When acks are written, polling, loop_break, asyncio heartbeats and cancellation (issue 12, items 4, 9-13).
_DRIVING = "tests/test_driving_semantics.py"
#: The consuming semantics of issue 12 (basic_qos, channel errors, channel limits, consumer tags).
_CONSUMING = "tests/test_consuming_semantics.py"
_CONFIRMS = (
    "tests/test_faults.py::test_confirms_multiple_ack_nack_and_return_each_reach_their_own_promise",
    "tests/test_faults.py::test_unknown_or_duplicate_confirms_break_the_connection_and_resolve_nothing_wrongly",
    _GUARANTEES,
)
_HEARTBEATS = (
    "tests/test_client.py::test_heartbeat_is_negotiated",
    "tests/test_urls.py::test_client_with_heartbeat_in_the_url_uses_it",
    "tests/test_faults.py::test_stalled_peer_is_dead_after_two_silent_heartbeat_intervals",
    "tests/test_faults.py::test_a_heartbeat_is_sent_after_half_an_interval_without_sending",
    "tests/test_faults.py::test_close_on_a_stalled_peer_returns_once_heartbeats_give_up",
    "tests/test_faults.py::test_publish_blocked_in_push_back_still_notices_a_dead_peer",
    "tests/test_faults.py::test_idle_connection_with_heartbeats_stays_up",
    _GUARANTEES,
)
_SETTLING = (
    "tests/test_client.py::test_consume_ack_and_cancel",
    "tests/test_client.py::test_reject_requeues_and_nack_discards",
    "tests/test_client.py::test_acking_twice_is_an_error_at_the_call",
    "tests/test_client.py::test_basic_get_empty_and_ack",
    "tests/test_client.py::test_in_order_acks_given_between_two_calls_go_out_as_one_multiple_ack",
    "tests/test_client.py::test_out_of_order_acks_and_rejects_settle_exactly_their_messages",
    "tests/test_faults.py::test_double_ack_is_refused_at_the_call_and_the_consumer_goes_on",
    "tests/test_otel.py::test_nack_and_reject_make_settle_spans",
    "tests/test_otel.py::test_ack_multiple_settles_and_ends_every_message",
    _GUARANTEES,
)
_CHANNEL_ERRORS = (
    "tests/test_client.py::test_passive_declare_of_a_missing_queue_fails_only_that_promise",
    "tests/test_client.py::test_redeclare_with_other_arguments_is_precondition_failed",
    "tests/test_client.py::test_publish_to_a_missing_exchange_fails_and_later_publishes_work",
    "tests/test_client.py::test_error_on_the_publish_channel_fails_all_publishes_in_flight",
    "tests/test_faults.py::test_publish_to_a_missing_exchange_fails_only_that_promise",
    "tests/test_faults.py::test_publishes_dropped_by_a_publish_channel_error_are_never_reported_confirmed",
    "tests/test_faults.py::test_a_publish_channel_error_is_not_blamed_on_other_publishes",
    "tests/test_faults.py::test_redeclare_with_other_arguments_fails_only_that_promise",
    "tests/test_faults.py::test_broker_closing_a_consumers_channel_fails_only_that_consume",
    "tests/test_faults.py::test_broker_closing_an_idle_pooled_channel_does_not_break_the_connection",
    _GUARANTEES,
)
_PUSH_BACK = (
    "tests/test_faults.py::test_publish_blocked_in_push_back_still_notices_a_dead_peer",
    "tests/test_faults.py::test_publishing_into_a_stopped_upstream_keeps_memory_bounded",
    "tests/test_faults.py::test_publishing_past_the_high_water_mark_blocks_until_the_connection_breaks",
    "tests/test_faults.py::test_publishes_waiting_for_the_publish_channel_are_bounded_too",
    _GUARANTEES,
)
_TLS_VERIFY = (
    "tests/test_tls.py::test_verification_is_on_by_default",
    "tests/test_tls.py::test_hostname_mismatch_fails_verification",
    "tests/test_tls.py::test_hostname_mismatch_fails_with_url_cacertfile_too",
    "tests/test_tls.py::test_client_trusting_only_another_ca_fails",
    "tests/test_tls.py::test_server_certificate_from_untrusted_ca_fails",
    "tests/test_tls.py::test_check_hostname_off_still_verifies_the_chain",
    "tests/test_tls.py::test_verify_false_turns_verification_off",
    "tests/test_tls.py::test_verify_false_in_a_dict_turns_verification_off",
    "tests/test_tls.py::test_require_certificate_false_turns_verification_off",
    "tests/test_tls.py::test_verify_none_url_option_turns_verification_off",
)
_SECRETS = (
    "tests/test_urls.py",
    "tests/test_security.py",
    "tests/test_client.py::test_repr_never_shows_the_password",
)

MUTANTS: tuple[Mutant, ...] = (
    # --- the five gaps of the earlier audit ---------------------------------------------------------
    Mutant(
        "close_skips_ack_flush",
        "puka/protocol/session.py",
        "        self.consuming.flush_acks()\n        zero = self.channels.by_number[0]\n",
        "        zero = self.channels.by_number[0]\n",
        (
            _T_CLIENT,
            "tests/test_otel.py",
            "tests/test_security.py::test_full_session_debug_logs_never_show_the_password",
            _REGRESSIONS,
            "tests/test_driving_semantics.py::test_close_writes_the_deferred_acks",
        ),
        "Session.close() sends connection.close without the acks deferred by basic_ack",
        known_gap=True,
    ),
    Mutant(
        "frame_max_not_applied",
        "puka/transport.py",
        "    def set_frame_max(self, frame_max: int) -> None:\n"
        '        """Refuse inbound frames larger than this (the size agreed in the handshake)."""\n'
        "        self.reader.frame_max = frame_max\n",
        "    def set_frame_max(self, frame_max: int) -> None:\n"
        '        """Refuse inbound frames larger than this (the size agreed in the handshake)."""\n'
        "        pass\n",
        (
            "tests/test_malformed.py",
            "tests/test_urls.py::test_client_uses_channel_and_frame_max_from_the_url",
            "tests/test_client.py::test_large_message_round_trip",
            _REGRESSIONS,
        ),
        "the negotiated frame_max never reaches the frame reader (it keeps its 131072 default)",
        known_gap=True,
    ),
    Mutant(
        "repr_leaks_password_prefix",
        "puka/urls.py",
        '        return "%s://%s:***@%s:%d/%s" % (self.scheme, user, host, self.port, vhost)\n',
        '        return "%s://%s:%s***@%s:%d/%s" % (self.scheme, user, self.password[:4], host, self.port, vhost)\n',
        _SECRETS + (_REGRESSIONS,),
        "redacted_url() (hence every repr and connect error) shows the first four characters of the password",
        known_gap=True,
    ),
    Mutant(
        "nack_multiple_only_own_tag",
        "puka/protocol/publishing.py",
        "            tags = range(publisher.low, tag + 1)\n            publisher.low = tag + 1\n",
        "            tags = range(tag, tag + 1)\n            publisher.low = tag + 1\n",
        _CONFIRMS[:2] + ("tests/test_otel.py::test_nacked_publish_is_publish_nacked", _REGRESSIONS, _GUARANTEES),
        "basic.nack with multiple=True fails only its own tag; the publishes below it stay pending forever",
        known_gap=True,
    ),
    Mutant(
        "heartbeat_3x",
        "puka/transport.py",
        "            if now - self.last_recv > self.heartbeat * 2:\n",
        "            if now - self.last_recv > self.heartbeat * 3:\n",
        _HEARTBEATS + (_REGRESSIONS,),
        "the peer is declared dead after three silent heartbeat intervals instead of two",
        more=(
            (
                "            delays.append(self.last_recv + self.heartbeat * 2 - now)\n",
                "            delays.append(self.last_recv + self.heartbeat * 3 - now)\n",
            ),
        ),
        known_gap=True,
    ),
    # --- confirms ------------------------------------------------------------------------------------
    Mutant(
        "confirm_multiple_ack_off_by_one",
        "puka/protocol/publishing.py",
        "            for t in range(low, tag + 1):\n",
        "            for t in range(low, tag):\n",
        _CONFIRMS + ("tests/test_client.py::test_pipelined_publishes_are_all_confirmed",),
        "basic.ack(multiple) confirms the publishes below its tag but not the tag itself",
    ),
    Mutant(
        "confirm_single_ack_keeps_in_flight",
        "puka/protocol/publishing.py",
        "            promise = inflight.pop(tag, None)\n            if promise is None:\n",
        "            promise = inflight.get(tag, None)\n            if promise is None:\n",
        _CONFIRMS,
        "a single basic.ack resolves its publish but leaves it in flight (a duplicate ack goes unnoticed)",
    ),
    # --- returns ---------------------------------------------------------------------------------------
    Mutant(
        "return_matched_to_wrong_promise",
        "puka/protocol/publishing.py",
        "        promise = session.table.promises.get(number) if isinstance(number, int) else None\n",
        "        promise = session.table.promises.get(number + 1) if isinstance(number, int) else None\n",
        _CONFIRMS[:1]
        + (
            "tests/test_client.py::test_return_fails_exactly_the_returned_publish_among_thousands",
            "tests/test_client.py::test_pubacks_false_emulates_confirms",
        ),
        "basic.return is matched to the promise after the returned one",
    ),
    Mutant(
        "return_not_no_route",
        "puka/protocol/publishing.py",
        '        cls: Any = spec.ERRORS.get(code, exceptions.AMQPError)\n        exc = cls(message["reply_text"]',
        '        cls: Any = exceptions.AMQPError\n        exc = cls(message["reply_text"]',
        _CONFIRMS[:1]
        + (
            "tests/test_otel.py::test_no_route_sets_error_status_and_error_type",
            "tests/test_client.py::test_return_fails_exactly_the_returned_publish_among_thousands",
        ),
        "a returned publish fails with a generic AMQPError instead of NoRoute (312)",
    ),
    # --- consuming -------------------------------------------------------------------------------------
    Mutant(
        "delivery_not_recorded_unacked",
        "puka/protocol/consuming.py",
        "            channel.unacked[tag] = message\n",
        "",
        _SETTLING[:2],
        "a delivery needing an ack is not recorded as unacked (basic_ack of it is refused)",
    ),
    Mutant(
        "prefetch_not_sent",
        "puka/protocol/consuming.py",
        "            session.send(method_frame(channel.number, _encode_qos(0, state.prefetch, False)))\n",
        "            session.send(method_frame(channel.number, _encode_qos(0, 0, False)))\n",
        (
            "tests/test_client.py::test_prefetch_limits_unacked_deliveries_and_basic_qos_changes_it",
            _CONSUMING + "::test_a_smaller_window_resolves_once_the_held_messages_fit_it",
        ),
        "basic_consume's prefetch_count is not sent (basic.qos 0: unlimited)",
    ),
    Mutant(
        "consume_tags_collide",
        "puka/protocol/consuming.py",
        '"puka.%d.%d" % (number, index)',
        '"puka.%d.%d" % (number, 0)',
        (
            "tests/test_client.py::test_consume_multi_reads_every_queue",
            "tests/test_client.py::test_consume_ack_and_cancel",
        ),
        "the generated consumer tags of basic_consume_multi are all the same",
    ),
    Mutant(
        "consumer_tag_ignored",
        "puka/protocol/consuming.py",
        'tag = given[index] or _unused("puka.%d.%d" % (number, index), chosen)',
        'tag = _unused("puka.%d.%d" % (number, index), chosen)',
        (
            "tests/test_faults.py::test_broker_closing_a_consumers_channel_fails_only_that_consume",
            "tests/test_otel.py",
            "tests/test_cli.py::test_declare_publish_get_consume_delete",
            _GUARANTEES,
            "tests/test_regressions.py::test_basic_consume_with_a_consumer_tag_consumes_under_that_tag",
        ),
        "basic_consume(consumer_tag=...) is ignored: a generated tag is used",
    ),
    Mutant(
        "qos_reuses_the_consumer_tag",
        "puka/protocol/consuming.py",
        "                tag = _fresh_tag(consumer, consume.number, state.generation, taken)\n",
        '                tag = consumer["tag"]\n',
        (_CONSUMING + "::test_after_basic_qos_the_window_counts_the_messages_held_from_before",),
        "basic_qos starts the new consumer under the old tag (the broker refuses a tag in use: 530)",
    ),
    Mutant(
        "qos_window_not_kept_by_the_client",
        "puka/protocol/consuming.py",
        "            if prefetch_count:\n                self._open_window(channel, consume, prefetch_count)\n",
        "            if False:\n                self._open_window(channel, consume, prefetch_count)\n",
        (
            _CONSUMING + "::test_after_basic_qos_the_window_counts_the_messages_held_from_before",
            _CONSUMING + "::test_a_smaller_window_resolves_once_the_held_messages_fit_it",
        ),
        "after basic_qos, messages held from before do not count against the new window",
    ),
    Mutant(
        "duplicate_consumer_tags_accepted",
        "puka/protocol/consuming.py",
        "        if len(set(chosen)) != len(chosen):\n",
        "        if False:\n",
        (_CONSUMING + "::test_a_consumer_tag_given_twice_is_refused_at_the_call_and_the_connection_goes_on",),
        "a consumer tag given twice in basic_consume_multi reaches the broker (530: the connection is closed)",
    ),
    # --- settling --------------------------------------------------------------------------------------
    Mutant(
        "reject_requeue_inverted",
        "puka/protocol/consuming.py",
        "                payload = _encode_reject(tag, requeue)\n",
        "                payload = _encode_reject(tag, not requeue)\n",
        _SETTLING,
        "basic_reject(requeue=True) discards the message and requeue=False requeues it",
    ),
    Mutant(
        "nack_requeue_inverted",
        "puka/protocol/consuming.py",
        "                payload = _encode_nack(tag, multiple, requeue)\n",
        "                payload = _encode_nack(tag, multiple, not requeue)\n",
        _SETTLING,
        "basic_nack's requeue flag is inverted on the wire",
    ),
    Mutant(
        "ack_multiple_settles_only_one",
        "puka/protocol/consuming.py",
        "        settled = [t for t in unacked if t <= tag] if multiple else [tag]\n"
        "        if before_send is not None:\n            before_send(message, settled)\n        for t in settled:\n",
        "        settled = [tag]\n"
        "        if before_send is not None:\n            before_send(message, settled)\n        for t in settled:\n",
        _SETTLING,
        "basic_ack/nack(multiple=True) forgets only the given message; the earlier ones stay 'unacked' in puka",
    ),
    Mutant(
        "ack_low_watermark_off_by_one",
        "puka/protocol/consuming.py",
        "        while low <= last and low not in unacked:\n",
        "        while low < last and low not in unacked:\n",
        _SETTLING,
        "the settled-below mark stops one short: in-order acks of the newest delivery are not deferred/batched",
        equivalent="since acks are written at once unless a further delivery waits in the client, the newest "
        "delivery's ack is never deferred either way; the mutant only sends it as a plain basic.ack after the "
        "deferred basic.ack(multiple) instead of one multiple ack: the broker's state is the same",
    ),
    # --- driving the client (when acks are written, polling, loop_break, asyncio) ------------------------
    Mutant(
        "ack_deferred_with_no_delivery_waiting",
        "puka/protocol/consuming.py",
        "            if promise.results and count < ACK_BATCH:  # type: ignore[union-attr]\n",
        "            if count < ACK_BATCH:  # type: ignore[union-attr]\n",
        (_DRIVING,),
        "an in-order ack is deferred even when no further delivery waits: nothing writes it until the next call",
    ),
    Mutant(
        "wait_hands_a_result_over_before_writing_acks",
        "puka/client.py",
        "        if self._consuming.pending_acks:\n            self._core.flush()\n"
        "        if self._chain is not None and _is_message(result):\n",
        "        if self._chain is not None and _is_message(result):\n",
        (_DRIVING,),
        "wait() returns a result already waiting without writing the acks deferred before (the issue's crash)",
    ),
    Mutant(
        "publish_does_not_write_deferred_acks",
        "puka/core.py",
        "            publishing.send = self._send_after_acks\n",
        "            pass\n",
        (_DRIVING,),
        "basic_publish leaves the acks deferred before it unwritten",
    ),
    Mutant(
        "wait_timeout_0_never_polls",
        "puka/client.py",
        "                    if polled:\n                        return None\n",
        "                    return None\n",
        (_DRIVING,),
        "wait(timeout=0) returns before reading: polling with it never progresses",
    ),
    Mutant(
        "loop_break_runs_every_ready_callback",
        "puka/client.py",
        "            self._run_callbacks(True)\n",
        "            self._run_callbacks(False)\n",
        (_DRIVING,),
        "loop() runs every ready callback before it notices loop_break()",
    ),
    Mutant(
        "asyncio_first_timer_never_rescheduled",
        "puka/asyncio.py",
        "            if timer.when() <= when + 0.001:\n                return\n            timer.cancel()\n",
        "            return\n",
        (_DRIVING, "tests/test_asyncio.py"),
        "the asyncio adapter keeps its first timer (the connect timeout): no heartbeat for 10 s",
    ),
    Mutant(
        "asyncio_cancelled_waiter_drops_its_result",
        "puka/asyncio.py",
        "                    self._table.ready.append(found)\n",
        "                    pass\n",
        (_DRIVING, "tests/test_asyncio.py"),
        "a task cancelled after being woken for a result leaves it unseen by the next waiter",
    ),
    # --- heartbeats ------------------------------------------------------------------------------------
    Mutant(
        "heartbeat_sent_at_full_interval",
        "puka/transport.py",
        "            if now - self.last_send >= self.heartbeat / 2:\n",
        "            if now - self.last_send >= self.heartbeat:\n",
        _HEARTBEATS + (_REGRESSIONS,),
        "a heartbeat is sent after a whole interval of silence instead of half of one",
        more=(
            (
                "            delays.append(self.last_send + self.heartbeat / 2 - now)\n",
                "            delays.append(self.last_send + self.heartbeat - now)\n",
            ),
        ),
    ),
    Mutant(
        "heartbeat_negotiation_max",
        "puka/protocol/handshake.py",
        "            heartbeat = min(int(wanted), server_heartbeat)\n",
        "            heartbeat = max(int(wanted), server_heartbeat)\n",
        _HEARTBEATS[:2],
        "tune-ok takes the larger of the client's and the broker's heartbeat instead of the smaller",
    ),
    # --- flow control ----------------------------------------------------------------------------------
    Mutant(
        "blocked_not_cleared",
        "puka/protocol/handshake.py",
        '        self.blocked = None\n        self.session.log.info("connection unblocked")\n',
        '        self.session.log.info("connection unblocked")\n',
        (*_CONFIRMS, "tests/test_regressions.py::test_connection_unblocked_clears_blocked_and_tells_on_blocked"),
        "connection.unblocked does not clear Client.blocked (test_blocked.py trips the broker's memory alarm: "
        "never selected here)",
    ),
    Mutant(
        "push_back_ignores_socket_buffer",
        "puka/client.py",
        "        number = publishing.publish(exchange, routing_key, body, headers, mandatory, callback)\n"
        "        if self._transport.backlog + publishing.backlog_bytes > PUBLISH_HIGH_WATER:\n",
        "        number = publishing.publish(exchange, routing_key, body, headers, mandatory, callback)\n"
        "        if publishing.backlog_bytes > PUBLISH_HIGH_WATER:\n",
        _PUSH_BACK,
        "basic_publish's push-back counts only publishes waiting for their channel, not the unsent socket buffer",
    ),
    # --- URLs and secrets ------------------------------------------------------------------------------
    Mutant(
        "password_not_percent_decoded",
        "puka/urls.py",
        '    password = _unquote(parts.password, "password") if parts.password is not None else "guest"\n',
        '    password = parts.password if parts.password is not None else "guest"\n',
        _SECRETS,
        "the URL's password is used percent-encoded",
    ),
    Mutant(
        "vhost_default_empty",
        "puka/urls.py",
        '    vhost = _unquote(path, "vhost") if path else "/"\n',
        '    vhost = _unquote(path, "vhost") if path else ""\n',
        ("tests/test_urls.py",),
        "a URL without a path gives the vhost '' instead of '/'",
    ),
    Mutant(
        "frame_logger_shows_credentials",
        "puka/tracing/__init__.py",
        '    "connection.start-ok": "response",\n',
        "",
        ("tests/test_security.py",),
        "FrameLogger/FrameRecorder no longer mask connection.start-ok's response (user and password)",
    ),
    # --- TLS -------------------------------------------------------------------------------------------
    Mutant(
        "check_hostname_off_by_default",
        "puka/client.py",
        "        check_hostname: bool = True,\n",
        "        check_hostname: bool = False,\n",
        _TLS_VERIFY,
        "SslConnectionParameters checks the certificate's host name only when asked to",
    ),
    Mutant(
        "verify_false_ignored",
        "puka/client.py",
        "        if not self.verify:\n",
        "        if self.verify is None:\n",
        _TLS_VERIFY,
        "verify=False (and verify_none, require_certificate=False) leaves verification on",
    ),
    Mutant(
        "failed_verification_leaks_the_socket",
        "puka/transport.py",
        "        except ssl.SSLCertVerificationError as exc:\n",
        "        except ssl.SSLCertVerificationError as exc:\n"
        "            self._kept = self.sock\n"
        "            self.sock = None\n",
        (
            "tests/test_tls.py::test_hostname_mismatch_fails_verification",
            "tests/test_tls.py::test_check_hostname_off_still_verifies_the_chain",
        ),
        "a connect that fails certificate verification leaves its socket open",
    ),
    # --- spec codecs -----------------------------------------------------------------------------------
    Mutant(
        "table_int_tag_unsigned",
        "puka/spec/tables.py",
        '                append(encoded_key + _tag_i32(b"I", value))\n',
        '                append(encoded_key + _tag_i32(b"i", value))\n',
        ("tests/test_spec.py",),
        "32-bit ints in field tables are tagged 'i' (unsigned) instead of 'I' (signed)",
    ),
    Mutant(
        "table_short_decoded_unsigned",
        "puka/spec/tables.py",
        '    ord("s"): _fixed(_i16, 2),\n',
        '    ord("s"): _fixed(_u16, 2),\n',
        ("tests/test_spec.py",),
        "the signed 16-bit table value 's' is decoded as unsigned",
    ),
    Mutant(
        "shortstr_limit_in_characters",
        "puka/spec/codecs.py",
        "        if len(raw) > 255:\n            raise",
        "        if len(value) > 255:\n            raise",
        ("tests/test_spec.py",),
        "the 255 limit of short strings is checked on characters, not encoded bytes",
    ),
    Mutant(
        "property_flags_lsb_first",
        "puka/spec/codecs.py",
        "    return 1 << (word * 16 + 15 - place)\n",
        "    return 1 << (word * 16 + 1 + place)\n",
        ("tests/test_spec.py",),
        "content property flag bits are numbered from the low end of the flag word",
    ),
    Mutant(
        "method_bits_msb_first",
        "puka/spec/codecs.py",
        "members = tuple((1 << bit, keys[i]) for bit, i in enumerate(x)",
        "members = tuple((0x80 >> bit, keys[i]) for bit, i in enumerate(x)",
        ("tests/test_spec.py",),
        "method bit fields are packed from the high bit of the octet",
    ),
    # --- framing and limits ----------------------------------------------------------------------------
    Mutant(
        "frame_reader_max_off_by_one",
        "puka/framing.py",
        "            if length > max_payload:\n",
        "            if length >= max_payload:\n",
        ("tests/test_framing.py", "tests/test_malformed.py"),
        "a frame of exactly frame_max bytes is rejected",
    ),
    Mutant(
        "body_chunk_off_by_one",
        "puka/framing.py",
        "    chunk = frame_max - 8 if frame_max else body_size\n",
        "    chunk = frame_max - 7 if frame_max else body_size\n",
        ("tests/test_framing.py", "tests/test_client.py::test_large_message_round_trip"),
        "body frames are one byte over frame_max",
    ),
    Mutant(
        "max_message_size_off_by_one",
        "puka/protocol/assembler.py",
        "                if body_size > self.max_message_size:\n",
        "                if body_size >= self.max_message_size:\n",
        ("tests/test_malformed.py",),
        "a message of exactly max_message_size bytes is refused",
        more=(
            (
                "body_size == len(content) and body_size <= self.max_message_size:\n",
                "body_size == len(content) and body_size < self.max_message_size:\n",
            ),
        ),
    ),
    Mutant(
        "channel_max_negotiation_max",
        "puka/protocol/handshake.py",
        "        self.channel_max = min(server_channel_max, self.wanted_channel_max or 65535)\n",
        "        self.channel_max = max(server_channel_max, self.wanted_channel_max or 65535)\n",
        ("tests/test_urls.py::test_client_uses_channel_and_frame_max_from_the_url",),
        "tune-ok offers the larger channel_max of the two sides",
    ),
    # --- channel errors and connection close -------------------------------------------------------------
    Mutant(
        "publish_channel_not_reopened",
        "puka/protocol/publishing.py",
        "            session.table.fail(promise, exc, dict(method))\n        self.open(publisher)\n",
        "            session.table.fail(promise, exc, dict(method))\n",
        _CHANNEL_ERRORS,
        "after the broker closes a publish channel, it is not reopened: later publishes to that exchange hang",
    ),
    Mutant(
        "channel_close_ok_not_sent",
        "puka/protocol/channels.py",
        "        session.send(method_frame(channel.number, _encode_channel_close_ok()))\n"
        "        channel.state = ChannelState.CLOSED\n        exc = session.error_from_close(method)\n",
        "        channel.state = ChannelState.CLOSED\n        exc = session.error_from_close(method)\n",
        _CHANNEL_ERRORS,
        "a pooled channel closed by the broker is not answered with channel.close-ok (its number is reused)",
    ),
    Mutant(
        "closed_channel_leftovers_are_violations",
        "puka/protocol/assembler.py",
        "                if not channel.is_open:\n"
        "                    return  # a leftover of a closed use of the number (sent before our close-ok)\n",
        "",
        (
            _CONSUMING + "::test_frames_after_the_brokers_channel_close_and_before_the_number_reopens_are_discarded",
            _CONSUMING
            + "::test_deliveries_sent_after_a_consume_channel_closed_are_discarded_and_the_connection_goes_on",
        ),
        "a delivery the broker sent before reading our channel.close-ok breaks the connection",
    ),
    Mutant(
        "consumes_take_the_reserved_channels",
        "puka/protocol/channels.py",
        "            return self.publish_channels + self.long_channels < self._channel_max - self.reserve\n",
        "            return self.publish_channels + self.long_channels < self._channel_max\n",
        (_CONSUMING + "::test_the_last_channels_are_kept_for_short_operations",),
        "consumes take every channel: short operations wait for one forever",
    ),
    Mutant(
        "short_operation_keeps_its_channel_until_taken",
        "puka/protocol/session.py",
        "            channels.finished(promise)  # the result waits in the promise: the channel serves the next one\n",
        "",
        (_CONSUMING + "::test_results_nobody_took_yet_do_not_hold_channels",),
        "a short operation holds its channel until its result is taken: later ones wait behind results nobody took",
    ),
    Mutant(
        "connection_close_ok_not_sent",
        "puka/protocol/handshake.py",
        '            session.send(method_frame(0, M["connection.close-ok"].encode_args()))\n',
        "            pass\n",
        (
            "tests/test_faults.py::test_broker_forced_close_fails_outstanding_promises_with_its_reason",
            "tests/test_malformed.py",
            "tests/test_asyncio.py",
            _GUARANTEES,
            "tests/test_regressions.py::"
            "test_a_connection_close_from_the_broker_fails_pending_promises_and_is_answered_with_close_ok",
        ),
        "connection.close from the broker is not answered with connection.close-ok",
    ),
    Mutant(
        "get_no_ack_not_sent",
        "puka/protocol/consuming.py",
        '        payload = M["basic.get"].encode_args(queue, no_ack)\n',
        '        payload = M["basic.get"].encode_args(queue, False)\n',
        (
            "tests/test_client.py",
            "tests/test_otel.py::test_get_makes_a_receive_span_linked_to_the_message",
            _GUARANTEES,
        ),
        "basic_get(no_ack=True) asks the broker for an acknowledged get (the message is held until the channel goes)",
    ),
)


# --- running ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # CAUGHT, SURVIVED, BROKEN, STALE, ERROR, EQUIVALENT
    detail: str = ""
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        if self.status == "CAUGHT":
            return "caught by %s" % self.detail
        return self.status + (" (%s)" % self.detail if self.detail else "")


def mutate(source: str, mutant: Mutant) -> str | None:
    """The mutated source, or None when an edit's snippet is not in ``source`` exactly once."""
    for snippet, replacement in mutant.edits():
        if source.count(snippet) != 1 or snippet == replacement:
            return None
        source = source.replace(snippet, replacement)
    return source


def stale_reason(mutant: Mutant, root: str) -> str | None:
    path = os.path.join(root, mutant.file)
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as exc:
        return "cannot read %s: %s" % (mutant.file, exc)
    for snippet, _ in mutant.edits():
        count = source.count(snippet)
        if count != 1:
            return "snippet found %d times in %s: %r" % (count, mutant.file, snippet[:60])
    return None


def snapshot(dest: str) -> None:
    """Copy what the tests need from the work tree (without caches) into ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "_build")
    for name in COPIED:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
        else:
            shutil.copy2(src, os.path.join(dest, name))
    with open(os.path.join(dest, GUARD_MODULE + ".py"), "w", encoding="utf-8") as f:
        f.write(_GUARD_SOURCE)


def environment(tree: str, report: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["MUTANT_ROOT"] = tree
    env["MUTANT_REPORT"] = report
    env.pop("PYTHONSAFEPATH", None)
    return env


def module_name(path: str) -> str:
    name = path[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def import_check(tree: str, module: str) -> tuple[bool, str]:
    """Import ``module`` in the copy's environment: (imported, its __file__ or the error)."""
    code = "import importlib, sys; m = importlib.import_module(sys.argv[1]); print(m.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code, module],
        cwd=tree,
        env=environment(tree, os.devnull),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return False, lines[-1] if lines else "exit status %d" % done.returncode
    return True, done.stdout.strip()


class IsolationError(Exception):
    pass


def check_isolation(tree: str, module: str) -> None:
    ok, where = import_check(tree, module)
    if ok and not os.path.realpath(where).startswith(os.path.realpath(tree) + os.sep):
        raise IsolationError("%s imported from %s, not from the copy %s" % (module, where, tree))


def run_pytest(
    tree: str, tests: list[str], *, first_only: bool, deselect: list[str], timeout: float
) -> tuple[int | None, list[str], list[str]]:
    """Run pytest on the copy: (exit status or None on timeout, report lines, output lines)."""
    report = os.path.join(tree, ".mutant-report")
    if os.path.exists(report):
        os.unlink(report)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", GUARD_MODULE]
    command += ["--timeout", str(TEST_TIMEOUT), "--rootdir", tree]
    if first_only:
        command.append("-x")
    for nodeid in deselect:
        command += ["--deselect", nodeid]
    command += tests
    try:
        done = subprocess.run(
            command, cwd=tree, env=environment(tree, report), capture_output=True, text=True, timeout=timeout
        )
        status: int | None = done.returncode
        output = (done.stdout + done.stderr).splitlines()
    except subprocess.TimeoutExpired as exc:
        status = None
        output = _text(exc.stdout).splitlines() + _text(exc.stderr).splitlines()
    lines: list[str] = []
    if os.path.exists(report):
        with open(report, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    if status == GUARD_EXIT or any(line.startswith("ISOLATION ") for line in lines):
        raise IsolationError("; ".join(line for line in lines if line.startswith("ISOLATION ")) or "\n".join(output))
    return status, lines, output


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def missing_tests(tree: str, tests: list[str]) -> list[str]:
    """The selected tests (paths or node ids) that do not exist in ``tree`` (renamed, moved, deleted)."""
    files = sorted({t.split("::", 1)[0] for t in tests if os.path.exists(os.path.join(tree, t.split("::", 1)[0]))})
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", GUARD_MODULE]
    done = subprocess.run(
        command + ["--rootdir", tree] + files,
        cwd=tree,
        env=environment(tree, os.path.join(tree, ".collect-report")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode == GUARD_EXIT:
        raise IsolationError(done.stdout + done.stderr)
    collected = [line.strip() for line in done.stdout.splitlines() if "::" in line]
    missing = []
    for test in tests:
        path = test.split("::", 1)[0]
        if path not in files:
            missing.append(test)
        elif "::" in test and not any(c == test or c.startswith((test + "[", test + "::")) for c in collected):
            missing.append(test)
    return missing


def present(tests: list[str], missing: set[str]) -> list[str]:
    return [t for t in tests if t not in missing]


def run_mutant(
    mutant: Mutant, base: str, work: str, deselect: list[str], timeout: float, also: list[str], missing: set[str]
) -> Outcome:
    started = time.monotonic()
    tests = present(list(mutant.tests) + also, missing)
    if not tests:
        return Outcome(mutant, "ERROR", "none of its tests exists any more")
    tree = os.path.join(work, mutant.name)
    shutil.copytree(base, tree)
    path = os.path.join(tree, mutant.file)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    mutated = mutate(source, mutant)
    if mutated is None:
        return Outcome(mutant, "STALE", stale_reason(mutant, tree) or "snippet not found exactly once")
    with open(path, "w", encoding="utf-8") as f:
        f.write(mutated)
    try:
        compile(mutated, path, "exec")
    except SyntaxError as exc:
        return Outcome(mutant, "BROKEN", "syntax error: %s" % exc, time.monotonic() - started)
    ok, where = import_check(tree, module_name(mutant.file))
    if not ok:
        return Outcome(mutant, "BROKEN", "import fails: %s" % where, time.monotonic() - started)
    if not os.path.realpath(where).startswith(os.path.realpath(tree) + os.sep):
        raise IsolationError("%s imported from %s, not from the copy %s" % (mutant.file, where, tree))
    status, lines, output = run_pytest(tree, tests, first_only=True, deselect=deselect, timeout=timeout)
    seconds = time.monotonic() - started
    failures = [line.split(" ", 1)[1] for line in lines if line.startswith("FAILED ")]
    collect_errors = [line.split(" ", 1)[1] for line in lines if line.startswith("COLLECT ")]
    if status is None:
        return Outcome(mutant, "CAUGHT", "timeout after %ds%s" % (timeout, _first(failures)), seconds, output[-15:])
    if status == 0:
        return Outcome(mutant, "SURVIVED", "", seconds)
    if status == 1 and failures:
        return Outcome(mutant, "CAUGHT", failures[0], seconds)
    if collect_errors:
        return Outcome(mutant, "BROKEN", "collection error in %s" % collect_errors[0], seconds, output[-15:])
    return Outcome(mutant, "ERROR", "pytest exit status %s" % status, seconds, output[-15:])


def _first(failures: list[str]) -> str:
    return ", first failure %s" % failures[0] if failures else ""


def all_tests(mutants: list[Mutant], also: list[str]) -> list[str]:
    tests: list[str] = []
    for mutant in mutants:
        for test in list(mutant.tests) + also:
            if test not in tests:
                tests.append(test)
    return tests


def baseline(base: str, mutants: list[Mutant], timeout: float, also: list[str], missing: set[str]) -> list[str]:
    """Run every selected test on the unmutated copy; returns the ids of the tests that fail there."""
    tests = present(all_tests(mutants, also), missing)
    # A whole file and node ids inside it: the file covers them (pytest would run them twice).
    files = {t for t in tests if "::" not in t}
    tests = [t for t in tests if t.split("::", 1)[0] not in files or "::" not in t]
    status, lines, output = run_pytest(base, tests, first_only=False, deselect=[], timeout=max(timeout, 900.0))
    if status not in (0, 1):
        print("baseline run failed (pytest exit status %s):" % status)
        print("\n".join(output[-30:]))
        raise SystemExit(1)
    failing = []
    for line in lines:
        if line.startswith("FAILED "):
            nodeid = line.split(" ", 2)[1]
            if nodeid not in failing:
                failing.append(nodeid)
    return failing


def select(names: list[str] | None) -> list[Mutant]:
    if not names:
        return list(MUTANTS)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit("unknown mutant(s): %s (see --list)" % ", ".join(unknown))
    return [known[n] for n in names]


def show(mutant: Mutant) -> None:
    with open(os.path.join(ROOT, mutant.file), encoding="utf-8") as f:
        source = f.read()
    mutated = mutate(source, mutant)
    if mutated is None:
        print("%s: STALE (%s)" % (mutant.name, stale_reason(mutant, ROOT)))
        return
    sys.stdout.writelines(
        difflib.unified_diff(
            source.splitlines(keepends=True), mutated.splitlines(keepends=True), "a/" + mutant.file, "b/" + mutant.file
        )
    )


def print_table(outcomes: list[Outcome]) -> None:
    width = max(len(o.mutant.name) for o in outcomes)
    for outcome in outcomes:
        flag = "  [known gap]" if outcome.mutant.known_gap and outcome.status == "SURVIVED" else ""
        print("%-*s %6.1fs  %s%s" % (width, outcome.mutant.name, outcome.seconds, outcome.text, flag))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--check", action="store_true", help="only check that every snippet is found (STALE)")
    parser.add_argument("--show", metavar="NAME", help="print one mutant as a diff")
    parser.add_argument("--also", action="append", default=[], metavar="TEST", help="add tests to every selection")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    parser.add_argument("--run-equivalent", action="store_true", help="run the mutants marked equivalent too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary trees")
    args = parser.parse_args(argv)

    mutants = select(args.only)
    if args.show:
        show(select([args.show])[0])
        return 0
    if args.list:
        for m in mutants:
            note = " [equivalent: %s]" % m.equivalent if m.equivalent else (" [known gap]" if m.known_gap else "")
            print("%s  (%s)%s\n    %s\n    tests: %s" % (m.name, m.file, note, m.about, " ".join(m.tests)))
        return 0
    stale = [(m, reason) for m in mutants if (reason := stale_reason(m, ROOT)) is not None]
    for m, reason in stale:
        print("STALE %s: %s" % (m.name, reason))
    if args.check:
        with tempfile.TemporaryDirectory(prefix="puka-mutants-") as tree:
            snapshot(tree)
            missing_selection = missing_tests(tree, all_tests(mutants, args.also))
        for test in missing_selection:
            print("STALE TEST %s (selected by %s)" % (test, ", ".join(m.name for m in mutants if test in m.tests)))
        print("%d mutant(s), %d stale, %d stale test(s)" % (len(mutants), len(stale), len(missing_selection)))
        return 1 if stale or missing_selection else 0

    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="puka-mutants-")
    base = os.path.join(work, "base")
    os.mkdir(base)
    outcomes: list[Outcome] = []
    missing: list[str] = []
    try:
        snapshot(base)
        check_isolation(base, "puka")
        print("work tree snapshot in %s; puka is imported from the copy" % base, flush=True)
        stale_names = {m.name for m, _ in stale}
        to_run = [m for m in mutants if m.name not in stale_names and (args.run_equivalent or not m.equivalent)]
        missing += missing_tests(base, all_tests(to_run, args.also)) if to_run else []
        for test in missing:
            users = ", ".join(m.name for m in to_run if test in m.tests) or "--also"
            print("  STALE TEST: %s does not exist (selected by %s)" % (test, users), flush=True)
        deselect: list[str] = []
        if not args.no_baseline and to_run:
            t0 = time.monotonic()
            deselect = baseline(base, to_run, args.timeout, args.also, set(missing))
            print("baseline: selected tests run on the unmutated copy in %.0fs" % (time.monotonic() - t0), flush=True)
            for nodeid in deselect:
                print("  WARNING: fails without any mutation, deselected: %s" % nodeid, flush=True)
        for mutant in mutants:
            if mutant.name in stale_names:
                outcomes.append(Outcome(mutant, "STALE", dict((m.name, r) for m, r in stale)[mutant.name]))
                continue
            if mutant.equivalent and not args.run_equivalent:
                outcomes.append(Outcome(mutant, "EQUIVALENT", mutant.equivalent))
                continue
            outcome = run_mutant(mutant, base, work, deselect, args.timeout, args.also, set(missing))
            outcomes.append(outcome)
            print("%-36s %6.1fs  %s" % (mutant.name, outcome.seconds, outcome.text), flush=True)
            for line in outcome.log if outcome.status in ("ERROR", "BROKEN") else []:
                print("    | " + line)
            if not args.keep:
                shutil.rmtree(os.path.join(work, mutant.name), ignore_errors=True)
    except IsolationError as exc:
        print("ISOLATION FAILURE: %s" % exc)
        return 2
    finally:
        if args.keep:
            print("temporary trees kept in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    total = time.monotonic() - started
    print()
    counted = [o for o in outcomes if o.status in ("CAUGHT", "BROKEN", "SURVIVED")]
    killed = [o for o in counted if o.status != "SURVIVED"]
    equivalent = [o for o in outcomes if o.mutant.equivalent]
    print_table([o for o in outcomes if not o.mutant.equivalent or args.run_equivalent])
    if equivalent and not args.run_equivalent:
        print("\nequivalent (not counted):")
        for o in equivalent:
            print("  %s: %s" % (o.mutant.name, o.mutant.equivalent))
    rate = 100.0 * len(killed) / len(counted) if counted else 0.0
    print(
        "\nkill rate: %d/%d = %.0f%%  (survived %d, stale %d, errors %d, equivalent %d)  total time %.0fs"
        % (
            len(killed),
            len(counted),
            rate,
            len(counted) - len(killed),
            sum(o.status == "STALE" for o in outcomes),
            sum(o.status == "ERROR" for o in outcomes),
            len(equivalent),
            total,
        )
    )
    for test in missing:
        print("STALE TEST (not run; fix the selection): %s" % test)
    return 1 if missing or any(o.status in ("STALE", "ERROR") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
