"""Console progress a person can plan by (Tune's own metric table is switched off): one line per trial epoch
and per trial end, and while trials run at least one line every `HEARTBEAT_S` seconds saying which trials run
and for how long; each line ends with the stage's trials done and the whole study's progress (`StudyProgress`:
epochs done, elapsed since the study started, and an estimate of the time left). A resumed stage first says
which trials continue from which epoch."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from statistics import mean
from typing import Callable, Mapping

from ray import tune

from idea.contract import SELECT_METRIC, SELECTION, Result, Stage, best_key

HEARTBEAT_S = 30.0  # the longest silence while trials run
ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of a trial that will not run again in this experiment


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _params(config: dict) -> str:
    """Every parameter of the trial (the searched ones, and a final run's seed): a line that silently left
    some out would show a configuration no trial ran."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))


@dataclass(frozen=True)
class Plan:
    """One stage's budget: its arm and kind (search, final, oracle), its trials and each trial's epochs (early
    stopping and ASHA end trials before)."""

    arm: str
    kind: str
    trials: int
    epochs: int


def stage_plan(name: str, trials: int, epochs: int) -> Plan:
    """The plan of the Tune experiment `name` (`<arm>-<kind>`: arm names hold no dash)."""
    arm, kind = name.rsplit("-", 1)
    return Plan(arm, kind, trials, epochs)


def study_plan(study) -> dict[str, Plan]:
    """Every stage a `studies.config.StudyConfig` runs, in order: per arm its search (if it has one), its final
    seeds and (with `oracle: true`) its oracle seeds, which a pick equal to the validation one skips."""
    out = {}
    for arm in study.arm_order():
        if study.arms[arm].searches:
            out[f"{arm}-{Stage.SEARCH}"] = Plan(arm, Stage.SEARCH, study.arms[arm].num_samples, study.epochs_of(arm))
        for kind in Stage.RETRAINED if study.oracle else (Stage.FINAL,):
            out[f"{arm}-{kind}"] = Plan(arm, kind, len(study.final_seeds()), study.epochs_of(arm))
    return out


class StudyProgress:
    """The whole study's epochs and time, which every stage's printer updates. The time left is an estimate:
    each stage's epochs still expected (`expected_epochs`: as long as the trials of its stage, else of its arm,
    that ended on their own; each trial's whole budget before one has) at its arm's epoch time measured so far
    (the driver's time from a trial's start or last epoch to its next; before the arm's first epoch, the mean of
    all arms'), `concurrency` trials at a time, a search at most its time budget. Elapsed counts from this
    command's start."""

    def __init__(self, plan: Mapping[str, Plan], concurrency: int, budget_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.plan, self.concurrency, self.budget_s, self.clock = dict(plan), concurrency, budget_s, clock
        self.start = clock()
        self.began: dict[str, float] = {}  # stage -> when it started in this command
        self.done: dict[str, dict[str, int]] = {}  # stage -> trial id -> epochs done
        self.ended: dict[str, set[str]] = {}  # stage -> trials that will not run again
        self.seconds: dict[str, list[float]] = {}  # arm -> measured epoch times
        self.lengths: dict[str, list[int]] = {}  # stage and arm -> epochs of its trials that ended on their own

    def begin(self, stage: str, plan: Plan) -> None:
        """A stage starts (or is restored), with its actual trials (a final stage skips seeds without a start)."""
        self.plan[stage] = plan
        self.began.setdefault(stage, self.clock())

    def epoch(self, stage: str, trial_id: str, epochs: int, seconds: float | None = None) -> None:
        done = self.done.setdefault(stage, {})
        done[trial_id] = max(done.get(trial_id, 0), epochs)
        if seconds is not None:
            self.seconds.setdefault(self.plan[stage].arm, []).append(seconds)

    def end(self, stage: str, trial_id: str, natural: bool = False) -> None:
        """A trial will not run again; `natural`: it ended on its own (early stopping or its budget), not cut by
        ASHA, a time budget or an error, so its length tells how long its stage's other trials will run."""
        epochs = self.done.setdefault(stage, {}).setdefault(trial_id, 0)
        ended = self.ended.setdefault(stage, set())
        if natural and epochs and trial_id not in ended:
            for key in (stage, self.plan[stage].arm):
                self.lengths.setdefault(key, []).append(epochs)
        ended.add(trial_id)

    def expected_epochs(self, stage: str) -> float:
        """The epochs a trial of `stage` is expected to run: the mean of the trials of its stage that ended on
        their own, else of its arm's (a final stage after its search), else its whole budget. Early stopping ends
        most trials long before their budget, which the budget alone would count in full."""
        plan = self.plan[stage]
        seen = self.lengths.get(stage) or self.lengths.get(plan.arm)
        return min(float(plan.epochs), mean(seen)) if seen else float(plan.epochs)

    def _left(self, stage: str) -> tuple[float, int]:
        """(epochs still expected, trials not ended) of a stage: a running trial past the expected length is
        expected to run one epoch more."""
        plan, done, ended = self.plan[stage], self.done.get(stage, {}), self.ended.get(stage, set())
        expect = self.expected_epochs(stage)
        running = [epochs for trial, epochs in done.items() if trial not in ended]
        unseen = max(0, plan.trials - len(done))
        left = sum(max(0.0, min(plan.epochs - e, max(expect - e, 1.0))) for e in running)
        return left + unseen * expect, len(running) + unseen

    def seconds_left(self) -> float | None:
        """The estimate of the time left; None before any epoch was measured."""
        every = [s for arm in self.seconds.values() for s in arm]
        if not every:
            return None
        total = 0.0
        for stage, plan in self.plan.items():
            epochs, trials = self._left(stage)
            if not epochs:
                continue
            seconds = epochs * mean(self.seconds.get(plan.arm) or every) / min(self.concurrency, trials)
            if self.budget_s and plan.kind == Stage.SEARCH:
                spent = self.clock() - self.began[stage] if stage in self.began else 0.0
                seconds = min(seconds, max(0.0, self.budget_s - spent))
            total += seconds
        return total

    def status(self) -> str:
        done = sum(sum(trials.values()) for trials in self.done.values())
        planned = done + round(sum(self._left(stage)[0] for stage in self.plan))
        left = self.seconds_left()
        eta = f"~{duration(left)} left (estimate)" if left is not None else "time left estimated after the first epoch"
        return f"study: {done}/{planned} epochs, {duration(self.clock() - self.start)} elapsed, {eta}"


_STUDY: StudyProgress | None = None  # the study this driver runs (`begin`), which every stage's printer reports


def begin(plan: Mapping[str, Plan], concurrency: int, budget_s: float | None = None) -> StudyProgress:
    """Start the study's clock and plan (the driver, once, before its first stage) and say how to read it."""
    global _STUDY
    _STUDY = StudyProgress(plan, concurrency, budget_s)
    print(f"progress: a line per trial epoch and at least every {HEARTBEAT_S:.0f} s while trials run; the study's "
          "time left is an estimate: its epochs still expected (as long as the trials of the same stage or arm that "
          "ended; each trial's whole budget before one has) at the epoch times measured so far, "
          f"{concurrency} trial(s) at a time",
          file=sys.stderr, flush=True)
    return _STUDY


class ProgressPrinter(tune.Callback):
    """Driver-side callback printing one stage's lines to stderr; `total` is the stage's number of trials,
    `max_epochs` each trial's epoch budget (a trial the scheduler stops before it was cut by ASHA). Without
    `study` it reports to the driver's (`begin`), else to a study of this stage alone."""

    def __init__(self, stage: str, total: int, concurrency: int, max_epochs: int, study: StudyProgress | None = None):
        self.stage, self.total, self.concurrency, self.max_epochs = stage, total, concurrency, max_epochs
        self.plan = stage_plan(stage, total, max_epochs)
        self.study = study or _STUDY or StudyProgress({stage: self.plan}, concurrency)
        self.clock = self.study.clock
        self.cut: dict[str, int] = {}  # trial id -> the epoch after which ASHA stopped it
        self.epochs: dict[str, int] = {}  # trial id -> epochs done
        self.since: dict[str, float] = {}  # trial id -> its start or last epoch in this command
        self.said = self.clock()  # when this stage last printed
        self.stepped = False

    def setup(self, **info) -> None:
        self.study.begin(self.stage, self.plan)
        print(f"[{self.stage}] {self.total} trial(s), {self.concurrency} at a time", file=sys.stderr, flush=True)
        self.said = self.clock()

    def _status(self, trials, ending=None) -> str:
        """`ending`: the trial a completion or error hook is about, which Tune marks ended only after it."""
        done = sum(t.status in ENDED or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        return f"{done}/{self.total} done, {running} running | {self.study.status()}"

    def _say(self, text: str, trials, ending=None) -> None:
        print(f"[{self.stage}] {text} | {self._status(trials, ending)}", file=sys.stderr, flush=True)
        self.said = self.clock()

    def on_step_begin(self, iteration, trials, **info) -> None:
        """At a restored stage's first step, before its trials run again: which continue from which epoch."""
        if self.stepped:
            return
        self.stepped = True
        ended = [t for t in trials if t.status in ENDED]
        for trial in trials:
            if epochs := (trial.last_result or {}).get(Result.EPOCH, 0):
                self.epochs[trial.trial_id] = epochs
                self.study.epoch(self.stage, trial.trial_id, epochs)
        for trial in ended:  # taken to have ended on their own: a restored trial does not say whether ASHA cut it
            self.study.end(self.stage, trial.trial_id, natural=trial.status == "TERMINATED")
        if not (ended or self.epochs):
            return  # a new stage
        again = [t for t in trials if t.status not in ENDED]
        said = [f"trial {t.trial_id} continues after epoch {self.epochs[t.trial_id]} of {self.max_epochs} (its "
                "checkpoint)" if t.trial_id in self.epochs else f"trial {t.trial_id} starts from epoch 1"
                for t in again]
        self._say("resumed: " + "; ".join([*said, f"{len(ended)} trial(s) had ended"]), trials)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.clock() - self.said >= HEARTBEAT_S:
            self._heartbeat(trials)

    def _heartbeat(self, trials) -> None:
        """What runs, and how long it has been in its current epoch (before a trial's first epoch ends: since it
        started)."""
        now = self.clock()
        running = [f"trial {t.trial_id} in epoch {self.epochs.get(t.trial_id, 0) + 1} of {self.max_epochs} for "
                   f"{duration(now - self.since.get(t.trial_id, self.study.began.get(self.stage, now)))}"
                   for t in trials if t.status == "RUNNING"]
        waiting = sum(t.status == "PENDING" for t in trials)
        text = ("running: " + ", ".join(running)) if running else "no trial running yet"
        self._say(text + (f"; {waiting} waiting" if waiting else ""), trials)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.since[trial.trial_id] = self.clock()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if Result.PERMANENT_ERROR in result:
            return  # said when the trial completes
        # Tune marks a result `done` when the scheduler stops the trial on it; at max epochs that is no cut.
        if result.get("done") and result.get(Result.EPOCH, self.max_epochs) < self.max_epochs:
            self.cut[trial.trial_id] = result[Result.EPOCH]
        if Result.EVALUATED in result:
            self._say(f"trial {trial.trial_id} evaluated on the test windows", trials)
            return
        now, since = self.clock(), self.since.get(trial.trial_id)
        self.since[trial.trial_id] = now
        self.epochs[trial.trial_id] = result[Result.EPOCH]
        self.study.epoch(self.stage, trial.trial_id, result[Result.EPOCH], None if since is None else now - since)
        best = result.get(best_key(SELECT_METRIC))
        best_text = f" (best {best:.4f} at epoch {result.get(Result.BEST_EPOCH)})" if best is not None else ""
        self._say(f"trial {trial.trial_id} epoch {result[Result.EPOCH]} [{result.get('phase', '')}] valid {SELECTION[0]}@{SELECTION[1]} "
                  f"{result.get(SELECT_METRIC, float('nan')):.4f}{best_text} {_params(trial.config)}", trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        error = (trial.last_result or {}).get(Result.PERMANENT_ERROR)
        self.study.end(self.stage, trial.trial_id, natural=error is None and trial.trial_id not in self.cut)
        if error is not None:
            self._say(f"trial {trial.trial_id} FAILED, not retried (it would fail the same way): {error}", trials, trial)
            return
        if trial.trial_id in self.cut:
            self._say(f"trial {trial.trial_id} stopped by ASHA after epoch {self.cut[trial.trial_id]} of "
                      f"{self.max_epochs}", trials, trial)
            return
        self._say(f"trial {trial.trial_id} finished", trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.study.end(self.stage, trial.trial_id)
        self._say(f"trial {trial.trial_id} FAILED (see its error.txt under the study's ray/ folder)", trials, trial)

    def on_experiment_end(self, trials, **info) -> None:
        """Trials the time budget stopped (no per-trial hook), and a restored stage that had already ended (no
        step): their epochs count as done."""
        for trial in trials:
            self.study.epoch(self.stage, trial.trial_id, (trial.last_result or {}).get(Result.EPOCH, 0))
            if trial.status in ENDED:
                self.study.end(self.stage, trial.trial_id)
