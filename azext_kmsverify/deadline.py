# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The time budget of one run (``--timeout``), shared by every step so the whole run is bounded."""

from __future__ import annotations

import time


class Deadline:
    """Seconds left of ``--timeout``; every network wait is bounded by ``bound``."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return self.remaining() <= 0

    def cancel(self):
        """End the budget now: every wait bounded by it ends (a fleet's Ctrl-C)."""
        self.end = time.monotonic()

    def bound(self, wanted):
        """``wanted`` seconds, or less when the deadline is nearer (never below a small floor)."""
        return max(0.05, min(wanted, self.remaining()))
