# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The time budget of one run (``--timeout``), enforced from outside every wait.

A per-read timeout bounds silence, not slowness: a peer that sends one byte every half second never trips it.
So the deadline owns the run's end time and a watchdog (one daemon timer thread) that, at expiry or on
:meth:`Deadline.cancel` (a signal), calls every registered *stopper* at once. Transports register a stopper that
shuts their sockets down (``socket.shutdown``): any read, TLS handshake, header or frame blocked on them returns
at once. A blocking call that has no socket to give (a token request inside azure-identity, msal or az) runs
through :meth:`Deadline.call`: in a worker thread that the caller stops waiting for at the deadline.

Pure: threading only (the stoppers bring the sockets).
"""

from __future__ import annotations

import threading
import time

#: Seconds a run may take beyond ``--timeout``: the probe's delete (defaults.PROBE_DELETE_GRACE) and the way out.
GRACE_SECONDS = 10


class DeadlineExpired(Exception):
    """:meth:`Deadline.call` stopped waiting: the budget ran out (or was cancelled) before the call returned."""

    def __init__(self, doing: str):
        super().__init__(f'the deadline expired while {doing}')
        self.doing = doing


class Deadline:  # pylint: disable=too-many-instance-attributes  # the budget and its watchdog
    """Seconds left of ``--timeout``; every network wait is bounded by ``bound`` and by the watchdog.

    ``watch(stop)`` registers a stopper (called once, from the watchdog thread, at expiry or cancel; at once when
    the deadline is already over) and returns a handle for ``unwatch``. ``call(fn, ...)`` runs a blocking call
    that cannot be cut from outside. ``close()`` (or leaving a ``with`` block) ends the watchdog without firing.
    """

    def __init__(self, seconds, clock=time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self.end = clock() + seconds
        self._lock = threading.Lock()
        self._stoppers: dict[int, object] = {}
        self._next_id = 0
        self._timer = None
        self._fired = False
        self._closed = False

    # --- the budget --------------------------------------------------------------------------------------------
    def remaining(self):
        return max(0.0, self.end - self._clock())

    def expired(self):
        return self.remaining() <= 0

    def cancel(self):
        """End the budget now: every wait bounded by it ends, every registered socket is shut down (a signal,
        a fleet's Ctrl-C)."""
        self.end = self._clock()
        self._fire()

    def bound(self, wanted):
        """``wanted`` seconds, or less when the deadline is nearer (never below a small floor)."""
        return max(0.05, min(wanted, self.remaining()))

    # --- the watchdog ------------------------------------------------------------------------------------------
    def watch(self, stop) -> int:
        """Register ``stop()`` to be called at expiry; returns the handle for :meth:`unwatch`."""
        with self._lock:
            handle = self._next_id
            self._next_id += 1
            fire_now = self._fired
            if not fire_now:
                self._stoppers[handle] = stop
                self._arm()
        if fire_now:
            _call(stop)
        return handle

    def unwatch(self, handle: int) -> None:
        with self._lock:
            self._stoppers.pop(handle, None)

    @property
    def fired(self) -> bool:
        """Whether the watchdog has stopped the registered transports (expiry or cancel)."""
        return self._fired

    def close(self) -> None:
        """Stop the watchdog without firing (the run is over; nothing is waiting any more)."""
        with self._lock:
            self._closed = True
            self._stoppers.clear()
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _arm(self) -> None:  # with self._lock held
        if self._timer is None and not self._closed:
            self._timer = threading.Timer(self.remaining(), self._tick)
            self._timer.daemon = True  # never keeps the process alive
            self._timer.name = 'kmsverify-deadline'
            self._timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
            if not self.expired():  # a clock that ran ahead of the timer: wait the rest
                self._arm()
                return
        self._fire()

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fired = True
            stoppers, self._stoppers = list(self._stoppers.values()), {}
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        for stop in stoppers:
            _call(stop)

    # --- blocking calls without a socket to give ------------------------------------------------------------------
    def call(self, fn, *args, doing: str = 'waiting', **kwargs):
        """``fn(*args, **kwargs)`` in a daemon worker thread; its result or exception, or
        :class:`DeadlineExpired` when the deadline comes (or :meth:`cancel` is called) first. The worker is
        abandoned, not killed: it must hold no lock the caller needs, and its late result is dropped."""
        if self._fired or self.expired():
            raise DeadlineExpired(doing)
        done = threading.Event()
        outcome: list = []

        def work():
            try:
                outcome.append((True, fn(*args, **kwargs)))
            except BaseException as ex:  # pylint: disable=broad-except  # handed to the caller as it is
                outcome.append((False, ex))
            finally:
                done.set()

        handle = self.watch(done.set)  # cancel() wakes the waiter at once
        try:
            worker = threading.Thread(target=work, name=f'kmsverify-{doing[:40]}', daemon=True)
            worker.start()
            done.wait(self.remaining())
        finally:
            self.unwatch(handle)
        if not outcome:
            raise DeadlineExpired(doing)
        ok, value = outcome[0]
        if ok:
            return value
        raise value


def _call(stop) -> None:
    try:
        stop()
    except Exception:  # pylint: disable=broad-except  # a transport already closed: nothing to stop
        pass
