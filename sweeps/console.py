"""A quiet console for sweeps: one progress line, real errors; Ray's, Tune's, MLflow's and the
trials' own output in a log file.

Ray, Tune, MLflow and the trials' forwarded prints all write to the driver's file descriptors
1 and 2 (from threads and C++ as well as from Python loggers), so the log is made by pointing
those descriptors at a file; the progress line goes to a copy of the terminal kept aside.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from ray import tune


_terminal: TextIO | None = None  # the terminal while a Console logs to a file


def terminal() -> TextIO:
    """Where progress goes: the terminal (standard output) kept aside by a Console, else stdout."""
    return _terminal or sys.stdout


class Console:
    """While ``log_to`` is in effect, fds 1 and 2 write to a file and ``terminal()`` to the terminal."""

    def __init__(self) -> None:
        global _terminal
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        _terminal = os.fdopen(os.dup(1), "w", buffering=1)
        self.log_path: Path | None = None

    def log_to(self, path: Path) -> None:
        """Send fds 1 and 2 to ``path``; what an earlier log file holds is moved there first."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.log_path and self.log_path != path:
            shutil.copyfile(self.log_path, path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        if self.log_path and self.log_path != path:
            self.log_path.unlink(missing_ok=True)
        self.log_path = path

    def restore(self, keep_log: bool = True) -> None:
        global _terminal
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        _terminal = None
        if self.log_path and not keep_log:
            self.log_path.unlink(missing_ok=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine(tune.ProgressReporter):
    """One line whenever trials end (and at least every ``every`` seconds): trials done / in progress /
    failed / pruned, the best so far, elapsed time and a rough ETA; each failed trial once, with its
    error file. (Tune pickles its reporter with the experiment, so it holds no stream: it prints to
    ``terminal()``.)"""

    def __init__(self, total: int, metric: str, mode: str, num_tasks: int, every: float = 300.0) -> None:
        self.total, self.metric, self.mode, self.num_tasks, self.every = total, metric, mode, num_tasks, every
        self.started = time.time()
        self.last_report = 0.0
        self.last_ended = -1
        self.reported_errors: set[str] = set()

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs) -> None:
        self.started = time.time()  # again after a resume

    def should_report(self, trials, done: bool = False) -> bool:
        ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        return done or ended != self.last_ended or time.time() - self.last_report >= self.every

    def report(self, trials, done: bool, *sys_info) -> None:
        self.last_report = time.time()
        for trial in trials:
            if trial.status == "ERROR" and trial.trial_id not in self.reported_errors:
                self.reported_errors.add(trial.trial_id)
                print(f"  trial {trial.trial_id} failed: {getattr(trial, 'error_file', None) or 'see the log'}",
                      file=terminal())
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        self.last_ended = len(ended)
        learned_all = [t for t in ended if t.status == "TERMINATED"
                       and (t.last_result or {}).get("tasks_done") == self.num_tasks]
        failed = sum(t.status == "ERROR" for t in trials)
        in_progress = sum(t.status in ("RUNNING", "PENDING", "PAUSED") for t in trials)
        scores = [t.last_result[self.metric] for t in learned_all if self.metric in (t.last_result or {})]
        best = (max if self.mode == "max" else min)(scores) if scores else None
        elapsed = time.time() - self.started
        eta = elapsed / len(ended) * (self.total - len(ended)) if ended else None
        print(f"[{_clock(elapsed)}] trials {len(ended)}/{self.total} done: {len(learned_all)} completed, {failed} failed, "
              f"{len(ended) - len(learned_all) - failed} pruned; {in_progress} in progress"
              + (f"; best {self.metric} {best:.2f}" if best is not None else "")
              + (f"; ETA {_clock(eta)}" if eta is not None and not done else ""), file=terminal(), flush=True)
