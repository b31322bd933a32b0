"""The console's progress lines (studies/progress.py), on a fake clock and fake trials (no Ray run): a line names
the trial's whole configuration; while trials run a line comes at least every 30 s, even before a first epoch;
every line carries the whole study's epochs, its elapsed time since the study's start (not the stage's) and an
estimate of the time left; a resumed stage says which trials continue from which epoch."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from idea.contract import Result
from studies.progress import HEARTBEAT_S, Plan, ProgressPrinter, StudyProgress

# a configuration of the idea arm's eight searched parameters (the smoke study's selected trial)
IDEA_TRIAL = {"K": 4, "N": 5, "T": 10, "beta": 18.66, "dropout": 0.2644, "lambda_low": 0.7712, "lr": 0.0003832,
              "tau": 0.3732}
# two stages of a study: ERM's search (2 trials x 3 epochs), then IDEA's (3 trials x 2 epochs), 2 at a time
PLAN = {"erm-search": Plan("erm", "search", 2, 3), "idea-search": Plan("idea", "search", 3, 2)}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(trial_id: str, status: str = "RUNNING", epoch: int | None = None, config: dict | None = None):
    return SimpleNamespace(trial_id=trial_id, config=config or {"lr": 0.001}, status=status,
                           last_result={} if epoch is None else {Result.EPOCH: epoch})


def epoch(printer: ProgressPrinter, trials, t, n: int, **result) -> None:
    t.status = "RUNNING"
    printer.on_trial_result(0, trials, t, {Result.EPOCH: n, "ndcg_at_10": 0.01, "phase": "erm", **result})


@pytest.fixture
def clock():
    return Clock()


def study_status(line: str) -> tuple[int, int, str, str]:
    """(epochs done, planned, elapsed, time left) of a line's study part."""
    m = re.search(r"\| study: (\d+)/(\d+) epochs, (\S+) elapsed, (.*)$", line)
    assert m, line
    return int(m[1]), int(m[2]), m[3], m[4]


def test_an_epoch_line_shows_every_searched_parameter(capsys):
    printer = ProgressPrinter("idea-search", total=3, concurrency=2, max_epochs=2)
    t = trial("f7d6daed", config=IDEA_TRIAL)
    printer.on_trial_result(0, [t], t, {Result.EPOCH: 1, "ndcg_at_10": 0.0096, "phase": "idea"})
    line = capsys.readouterr().err
    assert line.startswith("[idea-search] trial f7d6daed epoch 1 [idea] valid ndcg@10 0.0096 "), line
    assert " K=4 N=5 T=10 beta=18.7 dropout=0.264 lambda_low=0.771 lr=0.000383 tau=0.373 | 0/3 done" in line, line


def test_a_line_at_least_every_30_s_while_trials_run_even_before_their_first_epoch(capsys, clock):
    study = StudyProgress(PLAN, 2, clock=clock)
    printer = ProgressPrinter("erm-search", 2, 2, 3, study=study)
    printer.setup()
    a, b = trial("a_00000"), trial("a_00001", status="PENDING")
    printer.on_trial_start(0, [a, b], a)
    capsys.readouterr()
    clock.now += HEARTBEAT_S - 1
    printer.on_step_end(0, [a, b])
    assert capsys.readouterr().err == ""  # not yet
    clock.now += 1
    printer.on_step_end(0, [a, b])
    line = capsys.readouterr().err
    assert line.startswith("[erm-search] running: trial a_00000 in epoch 1 of 3 for 0m30s; 1 waiting | 0/2 done, "
                           "1 running | study: 0/12 epochs, 0m30s elapsed, time left estimated after the first epoch"), line
    epoch(printer, [a, b], a, 1)  # a line of its own: the next heartbeat is 30 s after it
    capsys.readouterr()
    clock.now += HEARTBEAT_S - 1
    printer.on_step_end(0, [a, b])
    assert capsys.readouterr().err == ""
    clock.now += 16
    printer.on_step_end(0, [a, b])
    assert "running: trial a_00000 in epoch 2 of 3 for 0m45s; 1 waiting" in capsys.readouterr().err


def test_the_study_line_counts_epochs_of_the_whole_study_and_estimates_the_time_left(capsys, clock):
    """12 epochs planned (2x3 + 3x2). ERM's first epochs take 60 s each: the 4 ERM epochs left take 2 min at 2 at a
    time, IDEA's 6 epochs (at ERM's time until IDEA measures its own) 3 min. ASHA cutting a trial shrinks the plan."""
    study = StudyProgress(PLAN, 2, clock=clock)
    printer = ProgressPrinter("erm-search", 2, 2, 3, study=study)
    printer.setup()
    a, b = trial("a_00000"), trial("a_00001")
    for t in (a, b):
        printer.on_trial_start(0, [a, b], t)
    clock.now += 60
    epoch(printer, [a, b], a, 1)
    epoch(printer, [a, b], b, 1)
    assert study_status(capsys.readouterr().err.splitlines()[-1]) == (2, 12, "1m00s", "~5m00s left (estimate)")
    clock.now += 60
    epoch(printer, [a, b], a, 2, done=True)  # ASHA stops a after epoch 2 of 3
    a.status = "TERMINATED"
    printer.on_trial_complete(0, [a, b], a)
    line = capsys.readouterr().err.splitlines()[-1]
    assert "stopped by ASHA after epoch 2 of 3 | 1/2 done, 1 running" in line, line
    # b: 2 epochs left, alone (1 at a time): 2 min; IDEA: 3 min
    assert study_status(line) == (3, 11, "2m00s", "~5m00s left (estimate)")


def test_elapsed_counts_from_the_studys_start_across_stages(capsys, clock):
    """The second stage's lines go on from the first's elapsed time, and use the arm's own epoch time once
    measured."""
    study = StudyProgress(PLAN, 2, clock=clock)
    erm = ProgressPrinter("erm-search", 2, 2, 3, study=study)
    erm.setup()
    trials = [trial("a_00000"), trial("a_00001")]
    for t in trials:
        erm.on_trial_start(0, trials, t)
        clock.now += 30
        for n in (1, 2, 3):
            epoch(erm, trials, t, n)
        t.status = "TERMINATED"
        erm.on_trial_complete(0, trials, t)
    clock.now += 600  # selection, warm starts: the study's clock runs on
    idea = ProgressPrinter("idea-search", 3, 2, 2, study=study)
    idea.setup()
    t = trial("b_00000")
    idea.on_trial_start(0, [t], t)
    clock.now += 20
    epoch(idea, [t], t, 1)
    done, planned, elapsed, left = study_status(capsys.readouterr().err.splitlines()[-1])
    # 6 ERM + 1 IDEA epoch; 11m20s since the start; IDEA's 5 epochs left at its 20 s, 2 at a time: 50 s
    assert (done, planned, elapsed, left) == (7, 12, "11m20s", "~0m50s left (estimate)")


def test_a_search_is_estimated_at_most_its_time_budget(clock):
    study = StudyProgress(PLAN, 2, budget_s=90, clock=clock)
    study.begin("erm-search", PLAN["erm-search"])
    study.epoch("erm-search", "a_00000", 1, seconds=100.0)
    clock.now += 30
    # ERM: 60 s of its budget left (not 5 epochs x 100 s / 2); IDEA: its whole budget, 90 s
    assert study.seconds_left() == pytest.approx(60 + 90)


def test_a_resumed_stage_says_which_trials_continue_from_which_epoch(capsys, clock):
    study = StudyProgress(PLAN, 2, clock=clock)
    printer = ProgressPrinter("erm-search", 3, 2, 3, study=study)
    printer.setup()
    ended, midway = trial("a_00000", "TERMINATED", epoch=3), trial("a_00001", "PENDING", epoch=2)
    fresh = trial("a_00002", "PENDING")
    printer.on_step_begin(0, [ended, midway, fresh])
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("[erm-search] resumed: trial a_00001 continues after epoch 2 of 3 (its checkpoint); "
                           "trial a_00002 starts from epoch 1; 1 trial(s) had ended | 1/3 done"), line
    assert study_status(line)[:2] == (5, 15)  # the restored epochs count as done: 5 + 4 left + IDEA's 6
    printer.on_step_begin(1, [ended, midway, fresh])  # said once
    assert capsys.readouterr().err == ""


def test_a_new_stage_says_nothing_at_its_first_step(capsys, clock):
    printer = ProgressPrinter("erm-search", 2, 2, 3, study=StudyProgress(PLAN, 2, clock=clock))
    printer.on_step_begin(0, [trial("a_00000", "PENDING")])
    assert capsys.readouterr().err == ""


def test_trials_are_expected_to_run_as_long_as_those_of_their_stage_or_arm_that_ended(capsys, clock):
    """Early stopping ends most trials long before their budget: once a trial of an arm has ended on its own, the
    arm's other trials (its final seeds too) count its length, not the budget; a stage's own ended trials come
    first, a trial past the expected length counts one epoch more, and a trial ASHA cut tells nothing."""
    plan = {"erm-search": Plan("erm", "search", 2, 100), "erm-final": Plan("erm", "final", 3, 100),
            "idea-search": Plan("idea", "search", 1, 50)}
    study = StudyProgress(plan, 1, clock=clock)
    search = ProgressPrinter("erm-search", 2, 1, 100, study=study)
    search.setup()
    a, b = trial("a_00000"), trial("a_00001", status="PENDING")
    for n in range(1, 6):
        epoch(search, [a, b], a, n)
    epoch(search, [a, b], a, 6, done=True)  # ASHA cuts a after 6 of 100 epochs
    a.status = "TERMINATED"
    search.on_trial_complete(0, [a, b], a)
    assert study.expected_epochs("erm-final") == 100  # a cut trial says nothing of the others' length
    for n in range(1, 21):
        epoch(search, [a, b], b, n)
    b.status = "TERMINATED"
    search.on_trial_complete(0, [a, b], b)  # early stopping ended b after 20
    assert study.expected_epochs("erm-final") == 20 and study.expected_epochs("idea-search") == 50
    final = ProgressPrinter("erm-final", 3, 1, 100, study=study)
    final.setup()
    s1, s2 = trial("c_00000"), trial("c_00001", status="PENDING")
    for n in range(1, 31):
        epoch(final, [s1, s2], s1, n)
    # s1 past the arm's 20: one more; then 2 unseen seeds x 20; IDEA's 50
    assert study_status(capsys.readouterr().err.splitlines()[-1])[:2] == (56, 56 + 1 + 40 + 50)
    s1.status = "TERMINATED"
    final.on_trial_complete(0, [s1, s2], s1)  # the stage's own length from now on
    assert study.expected_epochs("erm-final") == 30
    assert study_status(capsys.readouterr().err.splitlines()[-1])[:2] == (56, 56 + 60 + 50)
