"""deadline: the watchdog that ends every wait at --timeout from outside, and calls it cannot cut."""

import socket
import threading
import time

import pytest

from azext_kmsverify.deadline import Deadline, DeadlineExpired


def _shutdown(sock):
    return lambda: sock.shutdown(socket.SHUT_RDWR)


def test_a_blocked_read_returns_at_expiry_whatever_its_own_timeout():
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(60)  # a per-read timeout far beyond the deadline
        deadline = Deadline(0.5)
        deadline.watch(_shutdown(a))
        started = time.monotonic()
        assert a.recv(10) == b''  # shut down: the read returns at once
        assert 0.4 <= time.monotonic() - started < 2
        assert deadline.expired() and deadline.fired


def test_a_trickling_peer_cannot_stretch_the_deadline():
    a, b = socket.socketpair()
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                b.send(b'x')
            except OSError:
                return
            time.sleep(0.1)

    threading.Thread(target=trickle, daemon=True).start()
    deadline = Deadline(0.8)
    deadline.watch(_shutdown(a))
    started = time.monotonic()
    received = 0
    try:
        a.settimeout(5)
        while True:
            chunk = a.recv(1)  # each read is answered well within its own timeout
            if not chunk:
                break
            received += 1
    finally:
        stop.set()
        a.close()
        b.close()
    assert received >= 3 and time.monotonic() - started < 2


def test_cancel_stops_every_registered_transport_at_once():
    calls = []
    deadline = Deadline(60)
    for index in range(3):
        deadline.watch(lambda index=index: calls.append(index))
    handle = deadline.watch(lambda: calls.append('gone'))
    deadline.unwatch(handle)
    deadline.cancel()
    assert sorted(calls) == [0, 1, 2] and deadline.expired()
    deadline.cancel()  # once only
    assert len(calls) == 3
    late = []
    deadline.watch(lambda: late.append(1))  # registered after the end: stopped at once
    assert late == [1]


def test_close_ends_the_watchdog_without_firing():
    calls = []
    with Deadline(0.3) as deadline:
        deadline.watch(lambda: calls.append(1))
    time.sleep(0.6)
    assert calls == []


def test_a_failing_stopper_does_not_stop_the_others():
    calls = []
    deadline = Deadline(60)
    deadline.watch(lambda: 1 / 0)
    deadline.watch(lambda: calls.append(1))
    deadline.cancel()
    assert calls == [1]


def test_call_returns_the_result_or_the_exception():
    deadline = Deadline(5)
    assert deadline.call(lambda x, y=0: x + y, 2, y=3, doing='adding') == 5
    with pytest.raises(ZeroDivisionError):
        deadline.call(lambda: 1 / 0)


def test_call_stops_waiting_at_the_deadline():
    release = threading.Event()
    deadline = Deadline(0.5)
    started = time.monotonic()
    with pytest.raises(DeadlineExpired) as info:
        deadline.call(release.wait, 30, doing='requesting a token')
    assert time.monotonic() - started < 1.5
    assert info.value.doing == 'requesting a token'
    release.set()


def test_call_stops_waiting_on_cancel():
    release = threading.Event()
    deadline = Deadline(30)
    threading.Timer(0.3, deadline.cancel).start()
    started = time.monotonic()
    with pytest.raises(DeadlineExpired):
        deadline.call(release.wait, 30)
    assert time.monotonic() - started < 1.5
    release.set()
    with pytest.raises(DeadlineExpired):  # after the end: not even started
        deadline.call(lambda: 1)


def test_bound_and_remaining():
    now = [100.0]
    deadline = Deadline(10, clock=lambda: now[0])
    assert deadline.bound(30) == 10 and deadline.bound(3) == 3
    now[0] = 109.99
    assert deadline.bound(30) == 0.05 and not deadline.expired()
    now[0] = 111
    assert deadline.remaining() == 0 and deadline.expired()
