"""How a training run stops before its last step, and what it leaves: Ctrl-C (SIGINT) or SIGTERM, non-finite
values, a diverging loss, a file that cannot be written. Each stop raises an error whose message says what
happened and what is kept: ``kept`` = (path, step) of the newest good checkpoint, or None. The trainer never saves
a state that is not finite or has diverged (``train.py`` checks before every save), so the file named is good.

Signals (``RunStop``): while a run has written nothing, SIGINT and SIGTERM stop it at once (a KeyboardInterrupt:
there is nothing to save). From its first write on (``deferring``), the first signal is only noted; the loop ends
its step, logs and saves it, then raises ``TrainingInterrupted``, a KeyboardInterrupt, so that a notebook or a
script stops as after any Ctrl-C. A second signal stops at once, unsaved (a step or a validation can be long).
The handlers live as long as the run: the previous ones are back when it ends. Relies on nothing of the package.
"""
from __future__ import annotations

import signal
import threading

__all__ = ["RunStop", "TrainingInterrupted", "NonFiniteLossError", "DivergedError", "WriteError", "kept_text"]


def kept_text(kept) -> str:
    """What a stopped run leaves, for its message; ``kept``: (path, step) of its newest good checkpoint, or None."""
    return f"the last good checkpoint is {kept[0]} (step {kept[1]})" if kept else "no checkpoint was written"


class NonFiniteLossError(ValueError):
    """The loss, a gradient or the weights became NaN/inf: the run stopped, and that state was not saved."""

    def __init__(self, step: int, kept=None, what: str = "loss or gradient"):
        super().__init__(f"non-finite {what} at step {step}; training stopped, {kept_text(kept)} (try a lower "
                         "--lr, or --autocast none)")
        self.step, self.kept = step, kept


class DivergedError(ValueError):
    """A logged loss rose above ``factor`` times the lowest one logged: the run stopped, that state unsaved."""

    def __init__(self, step: int, loss: float, best: float, factor: float, kept=None):
        super().__init__(f"the loss diverged at step {step}: {loss:.3g}, over {factor:g} times the lowest logged "
                         f"({best:.3g}); training stopped, {kept_text(kept)} (try a lower --lr; --diverge 0 turns "
                         "this check off)")
        self.step, self.kept = step, kept


class WriteError(OSError):
    """A file of the run could not be written (a full disk, a folder made read-only): the run stopped."""

    def __init__(self, error: OSError, step: int, kept=None):
        super().__init__(f"cannot write the run's files at step {step}: {error}; training stopped, "
                         f"{kept_text(kept)} (free some space, or make the folder writable, then resume with "
                         "--resume)")
        self.step, self.kept = step, kept


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped a run, after it saved what it could. ``step``: the updates done;
    ``kept``: (path, step) of the newest good checkpoint, or None."""

    def __init__(self, step: int, kept=None):
        saved = kept is not None and kept[1] == step
        super().__init__(f"interrupted at step {step}; " + (f"saved {kept[0]} (resume with --resume)" if saved
                                                             else f"not saved, {kept_text(kept)}"))
        self.step, self.kept = step, kept


class RunStop:
    """A run's stop state, and (as a context manager) its SIGINT and SIGTERM handlers. ``received``: the name of
    the signal noted (None: none); ``deferring``: set by the trainer before its first write; ``step``: the updates
    done; ``kept``: (path, step) of the newest good checkpoint, or None. The trainer keeps the last two current,
    so that whatever stops the run can say what it leaves."""

    def __init__(self):
        self.received, self.deferring, self.step, self.kept, self._previous = None, False, 0, None, {}

    def __enter__(self) -> RunStop:
        if threading.current_thread() is threading.main_thread():    # only the main thread may set handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:       # ignored by our starter (nohup, &): stays so
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():                 # None: a handler not set from Python
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum, frame) -> None:
        if not self.deferring or self.received:                      # nothing written yet, or a second signal
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
