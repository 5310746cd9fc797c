"""Stop signals as a request to stop cleanly, not a crash: shared by ``train`` and ``predict``.

:class:`StopSignals` installs a handler for the given signals (SIGTERM from SLURM, Kubernetes,
``docker stop`` and systemd; SIGINT from Ctrl-C; SIGUSR1 from SLURM's ``--signal``) while a long job
runs. The first signal only records itself (``signum``) and calls the job's ``on_signal`` hook; the
job then finishes the unit of work in progress, saves, and exits with :func:`exit_code`
(128 + the signal number: 143 for SIGTERM, 130 for Ctrl-C) so that a scheduler does not record a
success. A second Ctrl-C while stopping exits at once (``os._exit(130)``, nothing saved) after one
line saying so; any other signal while stopping is logged and ignored (the save in progress goes on).

A signal that is ignored when the job starts (``nohup``, a background job of a non-interactive
shell ignores SIGINT) stays ignored, as Python itself does for SIGINT.

Imports only the standard library (``predict`` stays free of Lightning).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Callable, Optional, Sequence

log = logging.getLogger(__name__)

__all__ = ["StopSignals", "exit_code", "parse_signal", "signal_name", "DEFAULT_STOP_SIGNALS"]

#: what ``runtime.stop_signals`` and ``predict`` handle by default
DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def parse_signal(name: str) -> int:
    """Signal number of ``"SIGTERM"`` / ``"TERM"`` / ``"15"``; ValueError for unknown or uncatchable ones."""
    text = str(name).strip().upper()
    if text.isdigit():
        try:
            sig = signal.Signals(int(text))
        except ValueError:
            raise ValueError(f"unknown signal number {name!r}") from None
    else:
        key = text if text.startswith("SIG") else f"SIG{text}"
        if not hasattr(signal.Signals, key) or key.startswith("SIG_"):
            raise ValueError(f"unknown signal {name!r} (e.g. SIGTERM, SIGINT, SIGUSR1)")
        sig = signal.Signals[key]
    if sig.name in _UNCATCHABLE:
        raise ValueError(f"{sig.name} cannot be caught")
    return int(sig)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    return 128 + int(signum)


class StopSignals:
    """Catch ``names`` while active (``install()`` ... ``restore()``, or ``with``).

    ``on_signal(signum)`` runs inside the handler on the first signal (it may raise, to abandon
    work that can be abandoned safely); ``force_message()`` gives the line printed before a second
    Ctrl-C exits at once. ``signum`` / ``name`` / ``received_at`` describe the first signal.
    Handlers can only be installed from the main thread; elsewhere this object stays inactive.
    """

    def __init__(
        self,
        names: Sequence[str] = DEFAULT_STOP_SIGNALS,
        on_signal: Optional[Callable[[int], None]] = None,
        force_message: Optional[Callable[[], str]] = None,
        what: str = "the job",
    ) -> None:
        self.signals = [parse_signal(n) for n in names]
        self.on_signal = on_signal
        self.force_message = force_message
        self.what = what
        self.signum: Optional[int] = None
        self.received_at: Optional[float] = None
        self.active = False
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> Optional[str]:
        return None if self.signum is None else signal_name(self.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: stop signals are not handled")
            return self
        for s in list(self.signals):
            current = signal.getsignal(s)
            if current is signal.SIG_IGN:
                # ignored when the job started (nohup, a background job of a script): it stays ignored,
                # as Python itself keeps an ignored SIGINT
                log.debug("%s is ignored by this process: left ignored", signal_name(s))
                self.signals.remove(s)
                continue
            if s not in self._previous:
                self._previous[s] = current
            signal.signal(s, self._handle)
        self.active = True
        return self

    def reinstall(self) -> None:
        """Take the signals back (Lightning installs its own SIGTERM handler when ``fit`` starts)."""
        if self.active:
            for s in self.signals:
                if signal.getsignal(s) is not self._handle:
                    signal.signal(s, self._handle)

    def restore(self) -> None:
        if not self.active:
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous = {}
        self.active = False

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:
            self.signum = int(signum)
            self.received_at = time.monotonic()
            log.warning("received %s: stopping %s cleanly (Ctrl-C again stops at once, without saving)",
                        signal_name(signum), self.what)
            if self.on_signal is not None:
                self.on_signal(int(signum))
            return
        if signum == signal.SIGINT:
            text = self.force_message() if self.force_message is not None else ""
            msg = f"second Ctrl-C: stopped at once, nothing more saved{'; ' + text if text else ''}\n"
            try:
                os.write(2, msg.encode())
            finally:
                os._exit(exit_code(signal.SIGINT))
        log.warning("received %s while stopping on %s: ignored, the stop in progress goes on",
                    signal_name(signum), self.name)
