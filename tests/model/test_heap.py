"""HeapTrimmer: rate-limited malloc_trim(0), and that it really hands fragmented free heap memory
back to the OS (the model worker's slow growth under mixed image traffic)."""

from __future__ import annotations

import gc

import psutil
import pytest

from server.model.heap import HeapTrimmer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_at_most_once_per_interval() -> None:
    clock = Clock()
    trimmer = HeapTrimmer(interval_s=10.0, clock=clock)
    if not trimmer.available:
        pytest.skip("no glibc malloc_trim here")
    assert not trimmer.maybe_trim()  # not before the first interval
    clock.now += 10.0
    assert trimmer.maybe_trim() and trimmer.trims == 1
    clock.now += 9.9
    assert not trimmer.maybe_trim()
    clock.now += 0.1
    assert trimmer.maybe_trim() and trimmer.trims == 2


def test_fragmented_free_memory_goes_back_to_the_os() -> None:
    """Free 90 % of 4000 heap-sized blocks, every tenth kept (so glibc cannot shrink the heap
    from its top): the freed ~220 MiB stay resident until the trimmer runs."""
    clock = Clock()
    trimmer = HeapTrimmer(interval_s=1.0, clock=clock)
    if not trimmer.available:
        pytest.skip("no glibc malloc_trim here")
    process = psutil.Process()
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # below the mmap threshold: heap
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    kept = blocks[::10]
    del blocks
    gc.collect()
    before = process.memory_info().rss
    clock.now += 1.0
    assert trimmer.maybe_trim()
    after = process.memory_info().rss
    assert before - after > 100 * 2**20, (before, after)
    assert len(kept) == 400
