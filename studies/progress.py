"""Console progress a person can follow: one line per trial epoch and per trial end (Tune's own
metric table is switched off), each with the stage's trials done/total, elapsed and remaining time."""
from __future__ import annotations

import sys
import time

from ray import tune

from idea.contract import Result, best_key


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _params(config: dict) -> str:
    """Every parameter of the trial (the searched ones, and a final run's seed): a line that silently left
    some out would show a configuration no trial ran."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))


class ProgressPrinter(tune.Callback):
    """Driver-side callback printing to stderr; `total` is the stage's number of trials, `max_epochs` each
    trial's epoch budget (a trial the scheduler stops before it was cut by ASHA)."""

    def __init__(self, stage: str, total: int, concurrency: int, max_epochs: int):
        self.stage, self.total, self.concurrency, self.max_epochs = stage, total, concurrency, max_epochs
        self.start = time.monotonic()
        self.cut: dict[str, int] = {}  # trial id -> the epoch after which ASHA stopped it

    def setup(self, **info) -> None:
        self.start = time.monotonic()
        print(f"[{self.stage}] {self.total} trial(s), {self.concurrency} at a time", file=sys.stderr, flush=True)

    def _status(self, trials, ending=None) -> str:
        """`ending`: the trial a completion or error hook is about, which Tune marks ended only after it."""
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        elapsed = time.monotonic() - self.start
        left = f", ~{duration(elapsed / done * (self.total - done))} left" if 0 < done < self.total else ""
        return f"{done}/{self.total} done, {running} running, {duration(elapsed)} elapsed{left}"

    def _say(self, text: str, trials, ending=None) -> None:
        print(f"[{self.stage}] {text} | {self._status(trials, ending)}", file=sys.stderr, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if Result.PERMANENT_ERROR in result:
            return  # said when the trial completes
        # Tune marks a result `done` when the scheduler stops the trial on it; at max epochs that is no cut.
        if result.get("done") and result.get(Result.EPOCH, self.max_epochs) < self.max_epochs:
            self.cut[trial.trial_id] = result[Result.EPOCH]
        if Result.EVALUATED in result:
            self._say(f"trial {trial.trial_id} evaluated on the test windows", trials)
            return
        best = result.get(best_key("ndcg_at_10"))
        best_text = f" (best {best:.4f} at epoch {result.get(Result.BEST_EPOCH)})" if best is not None else ""
        self._say(f"trial {trial.trial_id} epoch {result[Result.EPOCH]} [{result.get('phase', '')}] valid ndcg@10 "
                  f"{result.get('ndcg_at_10', float('nan')):.4f}{best_text} {_params(trial.config)}", trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        error = (trial.last_result or {}).get(Result.PERMANENT_ERROR)
        if error is not None:
            self._say(f"trial {trial.trial_id} FAILED, not retried (it would fail the same way): {error}", trials, trial)
            return
        if trial.trial_id in self.cut:
            self._say(f"trial {trial.trial_id} stopped by ASHA after epoch {self.cut[trial.trial_id]} of "
                      f"{self.max_epochs}", trials, trial)
            return
        self._say(f"trial {trial.trial_id} finished", trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(f"trial {trial.trial_id} FAILED (see its error.txt under the study's ray/ folder)", trials, trial)
