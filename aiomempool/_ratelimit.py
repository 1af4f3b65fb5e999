"""Rate-limited warnings, the kernel's ``___ratelimit()`` for ``logging``."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("aiomempool")

# As the kernel's DEFAULT_RATELIMIT_INTERVAL and DEFAULT_RATELIMIT_BURST:
# at most BURST records every INTERVAL seconds, then one line that says how
# many were held back.
INTERVAL = 5.0
BURST = 10


class RateLimitedWarning:
    """Logs at most ``burst`` warnings per ``interval`` seconds.

    Invariant: ``missed`` counts the records dropped in the current window;
    it is reported, then reset, by the first record of the next window.
    """

    __slots__ = ("begin", "burst", "interval", "missed", "printed", "what")

    def __init__(
        self,
        interval: float = INTERVAL,
        burst: int = BURST,
        what: str = "allocation failure",
    ) -> None:
        self.what = what  # names the warnings in the line about those held back
        self.interval = interval
        self.burst = burst
        self.begin = 0.0
        self.printed = 0
        self.missed = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if not self.printed or now - self.begin >= self.interval:
            if self.missed:
                logger.warning("%d %s warnings suppressed", self.missed, self.what)
            self.begin = now
            self.printed = 0
            self.missed = 0
        if self.printed < self.burst:
            self.printed += 1
            logger.warning(msg, *args)
        else:
            self.missed += 1
