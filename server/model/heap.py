"""Handing freed heap memory back to the OS in the model worker.

Activations of every size (images of any resolution, prompts of any length) are allocated from
glibc's heap. Freed, that memory stays with the process: glibc returns only the top of the heap,
and the free chunks between live ones pile up. Under mixed image traffic this made the model
worker's resident memory creep for as long as the server ran (~0.2 MiB/s over a 20-minute soak
on the tiny checkpoint, all of it in the `[heap]` mapping); one `malloc_trim(0)` after seven
minutes of that load gave back 335 MiB. The worker therefore calls `malloc_trim(0)` at most every
TRIM_INTERVAL_S seconds, from the model's Python entry points (which run eagerly every step, also
when the decoder is compiled). Elsewhere than glibc, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    """`maybe_trim()`: malloc_trim(0) if `interval_s` passed since the last one."""

    def __init__(
        self, interval_s: float = TRIM_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trim = _malloc_trim()
        self.interval_s = interval_s
        self._clock = clock
        self._next = clock() + interval_s
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe_trim(self) -> bool:
        if self._trim is None:
            return False
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        self._trim(0)
        self.trims += 1
        return True
