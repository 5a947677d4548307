"""UUIDv7 ids: version 7, RFC variant, time-ordered and strictly increasing in a process."""

from __future__ import annotations

import itertools
import os
import threading
import time
import timeit
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qzpay.ids import _uuid7_source, new_id

COUNTER_MAX = 0xFFF


def timestamp_ms(value: uuid.UUID) -> int:
    return value.int >> 80


def counter(value: uuid.UUID) -> int:
    return (value.int >> 64) & COUNTER_MAX


class FakeClock:
    """A nanosecond wall clock the test moves by hand."""

    def __init__(self, ms: int) -> None:
        self.ns = ms * 1_000_000

    def __call__(self) -> int:
        return self.ns


def test_new_id_is_a_version_7_rfc_9562_uuid() -> None:
    made = new_id()
    assert isinstance(made, uuid.UUID)
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert uuid.UUID(str(made)) == made
    assert hash(made) == hash(uuid.UUID(int=made.int))


def test_new_id_carries_the_wall_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    # The counter may have borrowed a millisecond or two ahead on a very busy process.
    assert before <= timestamp_ms(made) <= after + 2


@settings(max_examples=25)
@given(size=st.integers(min_value=1_000, max_value=5_000))
def test_thousands_of_ids_are_strictly_increasing_and_version_7(size: int) -> None:
    made = [new_id() for _ in range(size)]
    assert all(earlier < later for earlier, later in itertools.pairwise(made))
    assert all(one.version == 7 and one.variant == uuid.RFC_4122 for one in made)
    assert [str(one) for one in made] == sorted(str(one) for one in made)


def test_ids_within_one_millisecond_count_up_from_a_random_seed() -> None:
    clock = FakeClock(1_700_000_000_000)
    source = _uuid7_source(clock)
    made = [source() for _ in range(100)]
    assert {timestamp_ms(one) for one in made} == {1_700_000_000_000}
    first = counter(made[0])
    assert first <= 0x7FF  # the top bit is left clear as a rollover guard
    assert [counter(one) for one in made] == list(range(first, first + 100))


def test_a_new_millisecond_reseeds_the_counter() -> None:
    seeds = set()
    for ms in range(1_700_000_000_000, 1_700_000_000_050):
        seeds.add(counter(_uuid7_source(FakeClock(ms))()))
    assert len(seeds) > 1  # random, not always zero


def test_counter_overflow_borrows_the_next_millisecond() -> None:
    clock = FakeClock(1_700_000_000_000)
    source = _uuid7_source(clock)
    made = [source() for _ in range(10_000)]
    assert all(earlier < later for earlier, later in itertools.pairwise(made))
    stamps = [timestamp_ms(one) for one in made]
    assert stamps[0] == 1_700_000_000_000
    # At least 2048 ids fit a millisecond, at most 4096: 10 000 ids span 3 to 5 of them.
    assert 1_700_000_000_002 <= stamps[-1] <= 1_700_000_000_004
    # Once the real clock passes the borrowed millisecond, ids follow it again.
    clock.ns = (stamps[-1] + 10) * 1_000_000
    assert timestamp_ms(source()) == stamps[-1] + 10


def test_a_clock_stepping_backwards_never_makes_an_id_go_backwards() -> None:
    clock = FakeClock(1_700_000_000_000)
    source = _uuid7_source(clock)
    before = source()
    clock.ns -= 5_000 * 1_000_000
    after = source()
    assert after > before
    assert timestamp_ms(after) == timestamp_ms(before)


def test_ids_from_many_threads_are_unique_and_increasing_per_thread() -> None:
    per_thread: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def work(out: list[uuid.UUID]) -> None:
        start.wait()
        out.extend(new_id() for _ in range(2_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [one for out in per_thread for one in out]
    assert len(set(every)) == len(every) == 16_000
    for out in per_thread:
        assert out == sorted(out)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_ids_without_deadlocking() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report an id and leave without running pytest's teardown
        try:
            os.write(write_end, new_id().bytes)
        finally:
            os._exit(0)
    os.close(write_end)
    child = uuid.UUID(bytes=os.read(read_end, 16))
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child.version == 7
    assert child != new_id()


def test_new_id_is_fast() -> None:
    # The budget is about 2 µs; allow slack for loaded CI machines.
    per_call = min(timeit.repeat(new_id, number=10_000, repeat=5)) / 10_000
    assert per_call < 20e-6
