"""puka.recovery.policy: the recovery settings, the backoff and the host rotation (pure, no broker, no clock)."""

from __future__ import annotations

import collections
import itertools
import random

import pytest

import puka
from puka.recovery import Recovery
from puka.recovery.policy import Backoff, FleetCounter, HostRotation
from puka.urls import parse_amqp_urls, redacted_urls

THREE = parse_amqp_urls("amqp://u:Zq9!Xk7@a:5672,b:5673,c:5674/")


class Fixed(random.Random):
    """A source whose random() is always ``value``: uniform(a, b) gives a + (b - a) * value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# --- Recovery --------------------------------------------------------------------------------------


def test_recovery_defaults():
    r = Recovery()
    assert (r.initial_delay, r.max_delay, r.deadline, r.republish, r.locked_retry, r.connect_timeout) == (
        0.05,
        5.0,
        60.0,
        True,
        5.0,
        None,
    )


def test_recovery_is_public_as_puka_recovery():
    assert puka.Recovery is Recovery
    assert "Recovery" in puka.__all__


def test_recovery_takes_none_for_no_deadline_and_for_the_client_timeout():
    r = Recovery(deadline=None, connect_timeout=None, republish=False, locked_retry=0)
    assert (r.deadline, r.connect_timeout, r.republish, r.locked_retry) == (None, None, False, 0.0)


def test_recovery_stores_whole_numbers_as_floats():
    r = Recovery(initial_delay=1, max_delay=2, deadline=3, locked_retry=4, connect_timeout=5)
    values = (r.initial_delay, r.max_delay, r.deadline, r.locked_retry, r.connect_timeout)
    assert values == (1.0, 2.0, 3.0, 4.0, 5.0) and all(type(v) is float for v in values)


@pytest.mark.parametrize(
    "settings",
    [
        {"initial_delay": 0},
        {"initial_delay": -0.1},
        {"initial_delay": float("nan")},
        {"initial_delay": float("inf")},
        {"max_delay": -1},
        {"max_delay": float("nan")},
        {"max_delay": float("inf")},
        {"initial_delay": 2.0, "max_delay": 1.0},
        {"deadline": 0},
        {"deadline": -5},
        {"deadline": float("nan")},
        {"deadline": float("inf")},
        {"locked_retry": -1},
        {"locked_retry": float("nan")},
        {"connect_timeout": 0},
        {"connect_timeout": -1},
        {"connect_timeout": float("nan")},
    ],
)
def test_recovery_refuses_values_out_of_range(settings):
    with pytest.raises(ValueError, match=next(iter(settings)) if len(settings) == 1 else "max_delay"):
        Recovery(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"initial_delay": "0.05"},
        {"initial_delay": None},
        {"max_delay": True},
        {"deadline": "60"},
        {"locked_retry": None},
        {"connect_timeout": [1]},
        {"republish": 1},
        {"republish": "no"},
        {"republish": None},
    ],
)
def test_recovery_refuses_wrong_types(settings):
    with pytest.raises(TypeError, match=next(iter(settings))):
        Recovery(**settings)


def test_recovery_is_immutable_and_compares_by_value():
    r = Recovery(deadline=None)
    with pytest.raises(AttributeError):
        r.deadline = 5.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.other = 1  # type: ignore[attr-defined]
    assert r == Recovery(deadline=None) and hash(r) == hash(Recovery(deadline=None))
    assert r != Recovery() and r != "Recovery"
    assert eval(repr(r), {"Recovery": Recovery}) == r


# --- Backoff ---------------------------------------------------------------------------------------


def test_the_first_attempt_is_immediate_and_so_after_a_reset():
    backoff = Backoff(rng=random.Random(1))
    assert backoff.next_delay() == 0.0
    assert backoff.next_delay() > 0.0
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.0


def test_waits_double_up_to_max_delay_at_the_top_of_the_jitter():
    backoff = Backoff(0.05, 5.0, rng=Fixed(1.0))
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])


def test_waits_never_go_below_initial_delay_at_the_bottom_of_the_jitter():
    backoff = Backoff(0.05, 5.0, rng=Fixed(0.0))
    assert [backoff.next_delay() for _ in range(6)] == [0.0] + [0.05] * 5


@pytest.mark.parametrize("seed", range(20))
def test_every_wait_is_within_its_window(seed):
    backoff = Backoff(0.05, 5.0, rng=random.Random(seed))
    assert backoff.next_delay() == 0.0
    for attempt in range(1, 40):
        cap = min(5.0, 0.05 * 2 ** (attempt - 1))
        assert 0.05 <= backoff.next_delay() <= cap


def test_waits_are_jittered():
    later = []
    for seed in range(20):
        backoff = Backoff(0.05, 5.0, rng=random.Random(seed))
        later.append([backoff.next_delay() for _ in range(10)][-1])
    assert len(set(later)) == 20
    assert min(later) < 2.5 < max(later)  # spread over the window, not bunched at the top


def test_a_very_long_outage_does_not_overflow():
    backoff = Backoff(0.05, 5.0, rng=random.Random(0))
    for _ in range(5000):
        delay = backoff.next_delay()
    assert 0.05 <= delay <= 5.0


def test_equal_initial_and_max_delay_gives_a_constant_wait():
    backoff = Backoff(1.0, 1.0, rng=random.Random(0))
    assert [backoff.next_delay() for _ in range(5)] == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_backoff_for_recovery_uses_its_delays():
    backoff = Backoff.for_recovery(Recovery(initial_delay=0.5, max_delay=0.5), rng=random.Random(0))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 0.5, 0.5]


def test_backoff_without_a_source_draws_from_its_own():
    backoff = Backoff(0.05, 5.0)
    assert [backoff.next_delay() for _ in range(2)] == [0.0, 0.05]
    assert 0.05 <= backoff.next_delay() <= 0.1


@pytest.mark.parametrize("initial, most", [(0, 1), (-1, 1), (2, 1), (float("nan"), 1), (0.1, float("inf"))])
def test_backoff_refuses_bad_delays(initial, most):
    with pytest.raises(ValueError):
        Backoff(initial, most)


# --- HostRotation: the first connect ---------------------------------------------------------------


def test_a_rotation_needs_a_host():
    with pytest.raises(ValueError):
        HostRotation([])


def test_the_first_round_tries_every_host_once():
    for seed in range(20):
        first = HostRotation(THREE, random.Random(seed)).first_round()
        assert sorted(first, key=lambda p: p.port) == list(THREE)


def test_the_same_seed_and_start_give_the_same_order():
    first = HostRotation(THREE, random.Random(7), start=1).first_round()
    assert first == HostRotation(THREE, random.Random(7), start=1).first_round()
    assert first[0] == THREE[1]


def test_thirty_clients_of_one_process_get_exactly_ten_first_hosts_each():
    # the process's own round robin, as puka.Client uses it (no source injected)
    first = collections.Counter(HostRotation(THREE).first_round()[0].host for _ in range(30))
    assert first == {"a": 10, "b": 10, "c": 10}


def test_the_round_robin_begins_at_a_random_place_once_per_process():
    starts = collections.Counter()
    for seed in range(30):
        fleet = FleetCounter(random.Random(seed))
        firsts = [HostRotation(THREE, random.Random(i), start=fleet.next_start(THREE)).order[0] for i in range(6)]
        assert firsts[3:] == firsts[:3] and sorted(firsts[:3], key=lambda p: p.port) == list(THREE)
        starts[firsts[0].host] += 1
    assert set(starts) == {"a", "b", "c"}  # each process (seed) begins somewhere else


def test_each_list_of_hosts_has_its_own_turn():
    fleet = FleetCounter(random.Random(1))
    other = parse_amqp_urls("amqp://x,y")
    a = [fleet.next_start(THREE) for _ in range(3)]
    fleet.next_start(other)
    b = [fleet.next_start(THREE) for _ in range(3)]
    assert sorted(a) == [0, 1, 2] and b == a


def test_the_other_hosts_follow_in_the_clients_own_order():
    rests = {tuple(h.host for h in HostRotation(THREE, random.Random(seed), start=0).order[1:]) for seed in range(20)}
    assert rests == {("b", "c"), ("c", "b")}


@pytest.mark.parametrize("start", [-1, 3])
def test_a_start_outside_the_list_is_refused(start):
    with pytest.raises(ValueError):
        HostRotation(THREE, random.Random(1), start=start)


def test_a_fleet_spreads_over_the_cluster_from_the_start():
    first = collections.Counter(HostRotation(THREE, random.Random(seed)).first_round()[0].host for seed in range(30))
    assert set(first) == {"a", "b", "c"}
    assert min(first.values()) >= 5, first


def test_the_rotation_keeps_the_list_as_given():
    rotation = HostRotation(THREE, random.Random(3))
    assert rotation.hosts == tuple(THREE)
    assert rotation.tried == [] and rotation.current is None


def test_a_rotation_without_a_source_draws_from_its_own():
    assert sorted(HostRotation(THREE).first_round(), key=lambda p: p.port) == list(THREE)


# --- HostRotation: recovery ------------------------------------------------------------------------


def test_losing_a_node_spreads_its_clients_over_the_survivors():
    moved = collections.Counter()
    for seed in range(30):
        rotation = HostRotation(THREE, random.Random(seed), start=0)
        rotation.connected(THREE[0])
        rotation.outage_started()
        moved[rotation.next_host(THREE[0]).host] += 1
    assert set(moved) == {"b", "c"}
    assert min(moved.values()) >= 10, moved


@pytest.mark.parametrize("count", [2, 3, 5])
@pytest.mark.parametrize("seed", range(10))
def test_never_the_host_that_just_failed_while_another_is_untried(count, seed):
    hosts = parse_amqp_urls("amqp://" + ",".join("h%d" % i for i in range(count)))
    rng = random.Random(1000 + seed)  # which host fails: a separate, seeded source
    rotation = HostRotation(hosts, random.Random(seed))
    current = rotation.first_round()[0]
    for _outage in range(5):
        rotation.connected(current)
        rotation.outage_started()
        failed = current
        for _attempt in range(3 * count):
            untried_before = [h for h in hosts if h not in rotation.tried and h != failed]
            host = rotation.next_host(failed)
            assert host != failed
            if untried_before:
                assert host in untried_before
            failed = host
        assert sorted(rotation.tried, key=lambda p: p.host) == list(hosts)  # every host had its turn
        current = rng.choice(hosts)


def test_an_outage_tries_each_host_once_then_goes_round_again():
    rotation = HostRotation(THREE, random.Random(5))
    order = rotation.first_round()
    rotation.connected(order[0])
    rotation.outage_started()
    attempts = [order[0]]
    for _ in range(7):
        attempts.append(rotation.next_host(attempts[-1]))
    assert attempts == list(itertools.islice(itertools.cycle(order), 8))
    assert rotation.tried == order


def test_tried_names_the_hosts_of_this_outage_only():
    rotation = HostRotation(THREE, random.Random(2))
    order = rotation.first_round()
    rotation.connected(order[0])
    rotation.outage_started()
    assert rotation.tried == []
    assert rotation.next_host(order[0]) == order[1]
    assert rotation.tried == order[:2]  # the lost host, then the one being tried
    message = "hosts tried: %s" % redacted_urls(rotation.tried)
    assert "@%s:%d/" % (order[0].host, order[0].port) in message and "Zq9" not in message
    rotation.connected(order[1])
    assert rotation.tried == [] and rotation.current == order[1]


def test_without_a_failed_host_the_rotation_starts_at_the_beginning_of_its_order():
    rotation = HostRotation(THREE, random.Random(4))
    order = rotation.first_round()
    assert rotation.next_host(None) == order[0]
    assert rotation.next_host(order[0]) == order[1]


def test_a_single_host_is_tried_again_and_again():
    (only,) = parse_amqp_urls("amqp://solo/")
    rotation = HostRotation([only], random.Random(0))
    rotation.outage_started()
    assert [rotation.next_host(only) for _ in range(3)] == [only] * 3
    assert rotation.tried == [only]
