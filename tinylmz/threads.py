"""How many threads the native kernels use: set by the user, or chosen by measuring.

Results never depend on the thread count (the kernels' threads split outputs, never
sums), so it can change at any call.  By default it is chosen while the engine runs: a
machine never has all its cores free (a browser, another job, a data logger's own work),
and a thread that must share a core with another process slows the steps that cannot be
split.  ``Governor`` times each forward pass per token with the thread count in use, tries
a neighbouring count now and then, and keeps the fastest, so more cores never make
tinylmz slower.  ``set_threads(n)`` (``-T/--threads``, ``threads=``) or
``$TINYLMZ_THREADS`` fixes the count instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

_local = threading.local()
_requested: int | None = None  # set_threads(): wins over $TINYLMZ_THREADS and the CPU count


def set_threads(n: int | None) -> None:
    """Use exactly ``n`` kernel threads from now on (None: back to ``$TINYLMZ_THREADS`` or automatic)."""
    global _requested
    if n is not None and int(n) < 1:
        raise ValueError("threads must be at least 1")
    _requested = None if n is None else int(n)


_cpus: tuple[float, int] | None = None  # (when read, count): the count read at most once a second


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota if one is set.

    Read again once a second at most (a decoder asks twice per step; the reads cost ~1 % of a step)."""
    global _cpus
    now = time.monotonic()
    if _cpus is None or now - _cpus[0] > 1.0:
        _cpus = (now, _read_cpus())
    return _cpus[1]


def _read_cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        n = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def fixed() -> int | None:
    """The thread count the user fixed (``set_threads`` or ``$TINYLMZ_THREADS``), or None."""
    if _requested is not None:
        return _requested
    env = os.environ.get("TINYLMZ_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"TINYLMZ_THREADS must be a whole number, not {env!r}") from None
    return None


def threads() -> int:
    """Threads for a kernel call made now from this thread."""
    chosen = getattr(_local, "chosen", None)
    if chosen is not None:
        return chosen
    n = fixed() or available_cpus()
    if getattr(_local, "sharing", False):
        return max(1, n // max(_sharing[0], 1))
    return n


_sharing = [0]  # threads inside side_by_side() now
_sharing_lock = threading.Lock()


@contextlib.contextmanager
def side_by_side():
    """Kernel calls from this thread share the cores equally with the other threads inside
    ``side_by_side()``, counted at each call: segments scored side by side take one core
    each, and the last one left takes them all."""
    with _sharing_lock:
        _sharing[0] += 1
    _local.sharing = True
    try:
        yield
    finally:
        _local.sharing = False
        with _sharing_lock:
            _sharing[0] -= 1


class Governor:
    """Chooses the thread count of each timed call from what such calls cost recently.

    Costs are kept per thread count and per size class of the call (its work units, e.g.
    tokens, rounded to a power of two), as moving averages of seconds per unit.  Most calls
    use the cheapest count known; every ``period``-th call tries a neighbour (one thread
    more or fewer), so a change of load is noticed within a few dozen calls.  A neighbour
    that measured twice as costly is tried four times less often.
    """

    period = 16
    alpha = 0.3

    def __init__(self) -> None:
        self.cost: dict[tuple[int, int], float] = {}
        self.calls = 0
        self.tries = 0  # neighbours tried
        self.seen: dict[tuple[int, int], int] = {}  # call number of each cost's last measurement
        self.lock = threading.Lock()

    def choose(self, size: int, most: int) -> int:
        with self.lock:
            self.calls += 1
            known = {nt: c for (nt, s), c in self.cost.items() if s == size and nt <= most}
            for nt in (most, 1):  # measure the two ends first
                if nt not in known:
                    return nt
            best = min(known, key=known.get)
            if self.calls % self.period:
                return best
            self.tries += 1
            alt = best + 1 if self.tries % 2 else best - 1
            if not 1 <= alt <= most:
                alt = best - 1 if alt > most else best + 1
            if not 1 <= alt <= most or alt == best:
                return best
            if alt in known and known[alt] > 2 * known[best] and self.tries % 8 >= 2:
                return best  # a far costlier neighbour: tried a quarter as often
            return alt

    def record(self, nt: int, size: int, per_unit: float) -> None:
        with self.lock:
            key = (nt, size)
            old = self.cost.get(key)
            # an average of calls long past says little about the load now: start it afresh
            if old is None or self.calls - self.seen.get(key, 0) > 2 * self.period:
                self.cost[key] = per_unit
            else:
                self.cost[key] = old + self.alpha * (per_unit - old)
            self.seen[key] = self.calls

    @contextlib.contextmanager
    def run(self, units: int):
        """Time the calls inside, made with the thread count chosen for ``units`` of work."""
        shared = getattr(_local, "sharing", False) and _sharing[0] > 1  # the share sets the count
        if shared or fixed() is not None or units <= 0:
            yield
            return
        most = available_cpus()
        if most == 1:
            yield
            return
        size = max(units, 1).bit_length()
        nt = self.choose(size, most)
        _local.chosen = nt
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _local.chosen = None
            self.record(nt, size, (time.perf_counter() - t0) / units)
