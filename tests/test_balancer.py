"""Balancing policies, pure: no sockets. Scenarios a client sees: equal nodes, one slow node, one
ejected node, a node that fails fast, a node that leaves."""
import random
from collections import Counter
from typing import NamedTuple

from framework.balancer import P2C, RoundRobin


class N(NamedTuple):
    address: str


A, B, C = N("a:1"), N("b:1"), N("c:1")


def simulate(policy, latency, calls=4000, concurrency=1):
    """``concurrency`` callers, each sending its next call when its last one is answered;
    ``latency[address]`` is fixed. Time is simulated, the policy's clock is not (it only decays)."""
    picks = Counter()
    in_flight = []  # (finish time, token, seconds)
    now = 0.0
    for _ in range(calls):
        if len(in_flight) >= concurrency:
            in_flight.sort(key=lambda item: item[0])
            now, token, seconds = in_flight.pop(0)
            policy.end(token, seconds, True)
        node = policy.pick([A, B])
        picks[node.address] += 1
        seconds = latency[node.address]
        in_flight.append((now + seconds, policy.begin(node), seconds))
    return picks


def test_round_robin_cycles_and_skips_unusable():
    rr = RoundRobin()
    assert [rr.pick([A, B, C]) for _ in range(3)] == [A, B, C]
    assert {rr.pick([A, B, C], lambda n: n is not B) for _ in range(6)} == {A, C}
    assert rr.pick([A, B], lambda n: False) is None
    assert rr.pick([]) is None


def test_p2c_equal_nodes_share_the_load():
    picks = simulate(P2C(rng=random.Random(1)), {"a:1": 0.001, "b:1": 0.001}, concurrency=8)
    assert 0.35 < picks["a:1"] / 4000 < 0.65, picks


def test_p2c_avoids_a_slow_node_with_one_caller_and_with_many():
    for concurrency in (1, 16):
        picks = simulate(P2C(rng=random.Random(2)), {"a:1": 0.0002, "b:1": 0.0052},
                         concurrency=concurrency)
        assert picks["b:1"] < 0.1 * 4000, (concurrency, picks)


def test_p2c_prefers_fewer_outstanding_calls():
    p2c = P2C(rng=random.Random(3))
    for node in (A, B):  # same latency history
        p2c.end(p2c.begin(node), 0.001, True)
    for _ in range(5):
        p2c.begin(A)
    assert all(p2c.pick([A, B]) == B for _ in range(20))


def test_p2c_fast_failures_do_not_attract_traffic():
    p2c = P2C(rng=random.Random(4))
    p2c.end(p2c.begin(A), 0.001, True)
    p2c.end(p2c.begin(B), 0.00001, False)  # refused at once: must not look like the best node
    assert all(p2c.pick([A, B]) == A for _ in range(20))


def test_p2c_usable_filter_single_node_and_forget():
    p2c = P2C(rng=random.Random(5))
    assert p2c.pick([]) is None
    assert p2c.pick([A]) == A
    assert p2c.pick([A, B, C], lambda n: n is C) == C
    assert p2c.pick([A, B], lambda n: False) is None
    p2c.end(p2c.begin(A), 0.5, True)
    assert p2c.cost(A)[1] > 0
    p2c.forget(A)
    assert p2c.cost(A) == (0, 0.0)  # a node that comes back starts fresh


def test_p2c_samples_every_node():
    p2c = P2C(rng=random.Random(6))
    nodes = [N(f"n{i}:1") for i in range(5)]
    seen = Counter(p2c.pick(nodes).address for _ in range(500))  # all idle: ties, any of two
    assert set(seen) == {n.address for n in nodes}
