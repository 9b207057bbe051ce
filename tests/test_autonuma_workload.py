"""The bench-autonuma scores (tests/hardware/autonuma_workload.py's `score`): crammed share and the
modelled throughput, on hand-made samples."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "hardware"))

from autonuma_workload import PATTERNS, REMOTE_BANDWIDTH_RATIO, score  # noqa: E402

CPUS = {0: frozenset({0, 1}), 1: frozenset({2, 3})}


def w(node, local):
    return {"node": node, "local": local}


def test_four_workers_on_a_two_cpu_node_are_half_crammed_and_half_as_fast():
    loc, crammed, tput = score([w(0, 1.0)] * 4, CPUS)
    assert (loc, crammed, tput) == (1.0, 0.5, 0.5)


def test_spread_workers_with_half_remote_memory():
    loc, crammed, tput = score([w(0, 1.0), w(0, 1.0), w(1, 0.0), w(1, 0.0)], CPUS)
    assert loc == 0.5 and crammed == 0.0
    assert tput == pytest.approx((2 * 1.0 + 2 * REMOTE_BANDWIDTH_RATIO) / 4)


def test_ideal_placement_scores_one():
    assert score([w(0, 1.0), w(0, 1.0), w(1, 1.0), w(1, 1.0)], CPUS) == (1.0, 0.0, 1.0)


def test_pattern_shapes_for_four_cpus():
    shapes = {name: (n, threads(4), slices) for name, (n, threads, slices) in PATTERNS.items()}
    assert shapes == {"numa01": (2, 2, False), "numa01_THREAD_ALLOC": (2, 2, True),
                      "numa02": (1, 4, True), "numa02_SMT": (1, 2, True)}
