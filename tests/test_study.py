"""Study-level behaviour on a real SQLite store, in process."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.config import load_config
from hpsearch.records import time_spent
from hpsearch.session import RunOptions, Session
from hpsearch.storage import open_storage, parse_storage
from hpsearch.study import SettingsMismatch, check_settings, open_study, run


def tiny_study(tmp_path, record=None):
    cfg = load_config(None, ["study.name='s'", "data.image_size=8"])
    spec = parse_storage(f"sqlite:///{tmp_path / 'store.db'}")
    storage = open_storage(spec, heartbeat_interval=30, grace_period=60)
    return cfg, open_study(storage, cfg, record or {"config": cfg.settings()})


def test_five_failed_trials_in_a_row_stop_the_study(tmp_path):
    cfg, study = tiny_study(tmp_path)
    calls = []

    def crashing(trial):
        calls.append(trial.number)
        trial.set_user_attr("fail_reason", "RuntimeError: out of disk")
        raise RuntimeError("out of disk")

    result = run(study, crashing, target=50)
    assert result.stopped_by_failures and len(calls) == 5
    assert result.last_fail_reason == "RuntimeError: out of disk"
    assert all(t.state == TrialState.FAIL for t in study.trials)


def test_a_success_resets_the_failure_streak(tmp_path):
    cfg, study = tiny_study(tmp_path)

    def flaky(trial):
        if trial.number % 4 == 3:
            return 0.5
        raise RuntimeError("flaky")

    result = run(study, flaky, target=3)
    assert not result.stopped_by_failures
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_settings_differences_are_named(tmp_path):
    cfg, study = tiny_study(tmp_path)
    other = load_config(None, ["study.name='s'", "data.image_size=8", "train.epochs=3",
                               "space.depth=2"])
    try:
        check_settings(study, {"config": other.settings()})
    except SettingsMismatch as err:
        message = str(err)
    else:
        raise AssertionError("a changed study was resumed")
    assert "config.space.depth was {'low': 1, 'high': 4, 'log': False}, now 2" in message
    assert "config.train.epochs was 6, now 3" in message
    assert "--study-name NEW" in message


def test_a_changed_time_budget_resumes_the_same_study(tmp_path):
    cfg, study = tiny_study(tmp_path)
    budget = load_config(None, ["study.name='s'", "data.image_size=8", "study.time='20m'"])
    check_settings(study, {"config": budget.settings()})  # like trials: no mismatch


def test_a_time_budget_ends_the_run_and_its_time_is_stored_as_each_trial_ends(tmp_path):
    def session(budget: str) -> Session:
        cfg = load_config(None, ["study.name='s'", "data.image_size=8", "study.trials=50",
                                 f"study.time={budget!r}"])
        return Session.open(cfg, RunOptions(storage=f"sqlite:///{tmp_path / 's.db'}",
                                            device="cpu"))

    first = session("1s")
    assert first.time_left() == first.cfg.study.time == 1.0
    seen = []

    def objective(trial):
        seen.append(time_spent(first.study))  # as a run killed now would leave it
        time.sleep(0.1)
        return 0.5

    result = first.run(objective=objective)
    assert 2 <= result.ran < 50 and len(seen) == result.ran
    assert seen[0] == 0 and all(a < b for a, b in zip(seen, seen[1:]))
    spent = time_spent(first.study)
    assert spent >= 1.0 and first.time_left() == 0 and first.nothing_to_do(result.ran)

    again = session("1s")  # a rerun: its budget is spent, it starts no trial
    assert again.time_left() == 0 and again.run(objective=objective).ran == 0
    longer = session("1m")  # a larger budget: what is left of it
    assert longer.time_left() == pytest.approx(60 - spent, abs=0.01)


def test_a_study_stored_before_a_setting_existed_resumes_with_its_default(tmp_path):
    cfg, study = tiny_study(tmp_path)
    older = cfg.settings()
    del older["space"]["head"]
    check_settings(study, {"config": cfg.settings()})  # the run's own record: same settings
    study.set_user_attr("hpsearch", {"config": older})
    check_settings(study, {"config": cfg.settings()})  # "flatten", as the older study ran
    forced = load_config(None, ["study.name='s'", "data.image_size=8", "space.head='gap'"])
    try:
        check_settings(study, {"config": forced.settings()})
    except SettingsMismatch as err:
        assert "config.space.head was 'flatten', now 'gap'" in str(err)
    else:
        raise AssertionError("a changed head was resumed")
    # The precision may change on resume, as the device may.
    fp32 = load_config(None, ["study.name='s'", "data.image_size=8", "train.precision='fp32'"])
    check_settings(study, {"config": fp32.settings()})


def test_a_study_stored_before_the_schedule_resumes_and_trains_as_it_ran(tmp_path):
    """An older study's record lacks the parameters added since (schedule, label smoothing):
    the same study file, which does not name them, resumes it at the values it ran with,
    a constant rate; a file that names them is judged by the settings check as before."""
    from hpsearch.params import Choice, Fixed
    from hpsearch.records import as_it_ran

    cfg = load_config(None, ["study.name='s'", "data.image_size=8"])
    spec = parse_storage(f"sqlite:///{tmp_path / 'store.db'}")
    older = cfg.settings()
    del older["space"]["schedule"], older["space"]["label_smoothing"]
    study = open_study(open_storage(spec), cfg, {"config": cfg.settings()})
    study.set_user_attr("hpsearch", {"config": older})  # as an earlier hpsearch stored it
    with pytest.raises(SettingsMismatch, match="config.space.schedule was 'constant'"):
        check_settings(study, {"config": cfg.settings()})
    kept = as_it_ran(cfg, {"config": older})
    fixed = {p.name: p.value for p in kept.space if isinstance(p, Fixed)}
    assert fixed["schedule"] == "constant" and fixed["label_smoothing"] == 0.0
    check_settings(study, {"config": kept.settings()})  # resumes
    searched = load_config(None, ["study.name='s'", "data.image_size=8",
                                  "space.schedule=['wsd', 'constant']"])
    assert Choice("schedule", ("wsd", "constant")) in as_it_ran(searched, {"config": older}).space
    assert as_it_ran(cfg, {"config": cfg.settings()}) is cfg  # a study of today: unchanged
    # Through a whole session: the run's own config is the one the study ran with.
    options = RunOptions(storage=f"sqlite:///{tmp_path / 'run.db'}", device="cpu")
    first = Session.open(cfg, options)
    record = first.study.user_attrs["hpsearch"]
    for name in ("schedule", "label_smoothing"):
        del record["config"]["space"][name]
    first.study.set_user_attr("hpsearch", record)
    assert Fixed("schedule", "constant") in Session.open(cfg, options).cfg.space


def test_a_time_budget_probe_that_diverges_keeps_the_length(tmp_path):
    from hpsearch.data import load_dataset
    from hpsearch.session import study_length

    cfg = load_config(None, ["study.name='s'", "data.image_size=8", "study.time=60",
                             "space.lr=8.0", "space.optimizer='sgd'"])
    data = load_dataset(cfg.data, 0)
    import torch

    assert study_length(cfg, data, torch.device("cpu"), None) == 6  # digits.toml's epochs


ALLOCATION_FAILURES = [
    lambda torch: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda torch: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                               "`cublasCreate(handle)`"),
    lambda torch: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    lambda torch: RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    lambda torch: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be "
                               "asynchronously reported"),
    lambda torch: RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"),
]


@pytest.mark.parametrize("failure", ALLOCATION_FAILURES,
                         ids=["typed", "cublas", "cudnn-alloc", "cudnn-internal", "cuda-error",
                              "mps"])
def test_a_trial_out_of_device_memory_fails_alone_with_its_reason(tmp_path, monkeypatch,
                                                                  failure):
    """Every kind of allocation failure torch raises fails that trial alone, with its phase
    and what to lower; the study goes on."""
    import torch

    from hpsearch import objective as objective_module
    from hpsearch.data import load_dataset
    from hpsearch.objective import make_objective

    cfg, study = tiny_study(tmp_path)
    data = load_dataset(cfg.data, cfg.study.seed)
    real_fit = objective_module.fit

    def fit_that_runs_out_once(model, data, settings, device, **kwargs):
        if not study.get_trials(states=(TrialState.FAIL,)):
            raise failure(torch)
        return real_fit(model, data, settings, device, **kwargs)

    monkeypatch.setattr(objective_module, "fit", fit_that_runs_out_once)
    cfg = load_config(None, ["study.name='s'", "data.image_size=8", "train.epochs=1"])
    result = run(study, make_objective(cfg, data, torch.device("cpu")), target=2)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and not result.stopped_by_failures
    reason = failed[0].user_attrs["fail_reason"]
    assert reason.startswith("out of memory on cpu in training at batch size 64 (")
    assert "(depth" in reason and "smaller" in reason
    said = str(failure(torch)).splitlines()[0]
    assert (said in reason) != isinstance(failure(torch), torch.OutOfMemoryError)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2


def test_a_study_of_another_tool_is_not_resumed(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    optuna.create_study(study_name="s", storage=url)
    try:
        tiny_study(tmp_path)
    except SettingsMismatch as err:
        assert "was not made by hpsearch" in str(err)
    else:
        raise AssertionError("a foreign study was resumed")


def test_the_median_pruner_reads_completed_trials_once_per_trial_with_the_same_decisions():
    from hpsearch.study import CompletedOncePerTrial

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for step in range(1, 6):
            trial.report(x * step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x

    outcomes, reads = [], []
    for pruner in (optuna.pruners.MedianPruner(n_startup_trials=3),
                   CompletedOncePerTrial(optuna.pruners.MedianPruner(n_startup_trials=3))):
        study = optuna.create_study(direction="maximize", pruner=pruner,
                                    sampler=optuna.samplers.RandomSampler(seed=1))
        real, count = study.get_trials, [0]

        def counted(*args, states=None, **kwargs):
            count[0] += states is not None and tuple(states) == (TrialState.COMPLETE,)
            return real(*args, states=states, **kwargs)

        study.get_trials = counted
        study.optimize(objective, n_trials=20)
        outcomes.append([(t.state, t.last_step) for t in study.trials])
        reads.append(count[0])
    assert outcomes[0] == outcomes[1]
    assert any(state == TrialState.PRUNED for state, _ in outcomes[0])
    assert reads[1] <= 20 < reads[0]


def test_a_wal_store_commits_without_fsync_and_syncs_the_log_once_a_trial_is_told(
        tmp_path, monkeypatch):
    import os
    import sqlite3

    from hpsearch.sqlite import sync_finished_trials, use_wal

    spec = parse_storage(f"sqlite:///{tmp_path / 'store.db'}")
    storage = open_storage(spec)
    study = optuna.create_study(study_name="s", storage=storage)
    with storage.engine.connect() as con:  # a new file starts in rollback-journal mode
        assert con.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    use_wal(spec, storage)
    with storage.engine.connect() as con:  # the pool was renewed: NORMAL under WAL
        assert con.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert con.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    synced, name = [], "fdatasync" if hasattr(os, "fdatasync") else "fsync"
    real = getattr(os, name)

    def counted(fd):
        synced.append(os.fstat(fd).st_ino)
        return real(fd)

    monkeypatch.setattr(os, name, counted)
    run(study, lambda trial: trial.suggest_float("x", 0, 1), target=3,
        callbacks=(sync_finished_trials(spec),))
    assert synced == [os.stat(f"{spec.path}-wal").st_ino] * 3
    con = sqlite3.connect(spec.path)  # and what was told is in the file
    assert con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] == 3
    con.close()


def test_a_signal_is_recorded_and_acted_on_at_the_next_safe_point(monkeypatch):
    """The handler raises nothing where the signal lands; the run's checks raise it."""
    import signal

    import pytest

    from hpsearch import interrupts

    monkeypatch.setattr(interrupts, "_requested", None)
    monkeypatch.setattr(interrupts, "_heeded", False)
    interrupts.check()  # nothing asked for: goes on
    interrupts._record(signal.SIGTERM, None)
    assert interrupts.requested()
    interrupts._record(signal.SIGINT, None)  # a second one, soon after: still only recorded
    monkeypatch.setattr(interrupts, "_since", interrupts._since - interrupts.PATIENCE - 1)
    with pytest.raises(KeyboardInterrupt):  # the first went unheeded too long: at once
        interrupts._record(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):  # a safe point acts on it
        interrupts.check()
    interrupts._record(signal.SIGINT, None)  # heeded: the clean stop is not cut short
    interrupts.forget()
    assert not interrupts.requested()


def test_a_stop_asked_for_during_a_trial_ends_the_study_after_it(tmp_path, monkeypatch):
    import pytest

    from hpsearch import interrupts

    cfg, study = tiny_study(tmp_path)
    monkeypatch.setattr(interrupts, "_requested", None)

    def objective(trial):
        if trial.number == 1:
            monkeypatch.setattr(interrupts, "_requested", 15)  # SIGTERM, in a store call say
        return trial.suggest_float("x", 0, 1)

    with pytest.raises(KeyboardInterrupt):
        run(study, objective, target=5)
    # The trial under way finished; no other started, and nothing was left running.
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_a_retry_shares_its_origins_seed_and_checkpoint_through_a_chain(tmp_path):
    from hpsearch.records import origin_of, trial_seed
    from hpsearch.study import queue_retry

    cfg, study = tiny_study(tmp_path)
    seeds = []
    for _ in range(3):  # the original, its retry, the retry's retry
        trial = study.ask()
        seeds.append((trial.number, origin_of(trial), trial_seed(cfg.study.seed, trial)))
        study.tell(trial, state=TrialState.FAIL)
        queue_retry(study, study.trials[trial.number], max_retry=None)
    first = seeds[0][0]
    assert [n for n, _, _ in seeds] == [first, first + 1, first + 2]
    assert {(origin, seed) for _, origin, seed in seeds} == {
        (first, cfg.study.seed * 100_003 + first)}
    # A finished trial read back from the store gives the same as the running one did.
    assert origin_of(study.trials[first + 2]) == first


def test_a_trial_stored_with_its_seed_keeps_it(tmp_path):
    """Stores written before the seed was derived hold it as a user attribute, which retries
    inherit: that seed is the one the trial trained with."""
    from hpsearch.records import trial_seed

    cfg, study = tiny_study(tmp_path)
    study.enqueue_trial({}, user_attrs={"seed": 12345})
    assert trial_seed(cfg.study.seed, study.ask()) == 12345


def test_a_run_alone_counts_its_own_trials_to_the_target(tmp_path):
    cfg, study = tiny_study(tmp_path)
    outcomes = [0.5, "prune", "fail", 0.6, "prune", 0.7, 0.8]

    def objective(trial):
        outcome = outcomes[trial.number]
        if outcome == "prune":
            raise optuna.TrialPruned()
        if outcome == "fail":
            raise RuntimeError("flaky")
        return outcome

    run(study, objective, target=2, alone=True)
    run(study, objective, target=5, alone=True)  # resumed: counts from what is stored
    states = [t.state for t in study.trials]
    assert len(states) == 6 and states[2] == TrialState.FAIL


def test_a_run_alone_still_counts_trials_another_process_added(tmp_path):
    cfg, study = tiny_study(tmp_path)
    # Another process on the same file: its own storage object, with its own cache.
    other = optuna.load_study(study_name="s", storage=open_storage(
        parse_storage(f"sqlite:///{tmp_path / 'store.db'}")))

    def objective(trial):
        if trial.number == 1:
            for _ in range(2):
                other.tell(other.ask(), 0.1)
        return 0.5

    run(study, objective, target=4, alone=True)
    # Trial 4, numbered after the other's 2 and 3, shows them: the run stops there, where a
    # read of the store after every trial would have stopped one trial sooner.
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]


def test_the_progress_bar_keeps_the_best_value_without_reading_it_each_trial(tmp_path,
                                                                             monkeypatch):
    from hpsearch.console import progress_bar

    cfg, study = tiny_study(tmp_path)
    values = [0.5, 0.7, None, 0.6, 0.9, 0.8]  # None: pruned

    def objective(trial):
        value = values[trial.number]
        if value is None:
            raise optuna.TrialPruned()
        return value

    # As `hpsearch run` sets it: without --verbose, Optuna logs no best trial (a read).
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run(study, objective, target=3)
        with progress_bar(study, len(values), 3, quiet=True) as bar:
            assert bar.best == 0.7  # read from the store
            reads = []
            monkeypatch.setattr(study._storage, "get_best_trial", lambda *a: reads.append(a))
            run(study, objective, target=len(values), callbacks=(bar,))
            assert bar.best == 0.9 and reads == []
    finally:
        optuna.logging.set_verbosity(verbosity)


def upload_weights(trial, tmp_path, store) -> str:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"weights of trial %d" % trial.number)
    return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                            study_or_trial=trial)


def test_a_retry_finds_its_own_weights_not_those_of_the_trial_it_replaces(tmp_path):
    """A trial that uploaded its weights and then died: its retry starts without the record,
    and a retry queued as earlier versions queued it (record inherited) still finds its own."""
    from hpsearch.records import ARTIFACT_KEY_PREFIX, weights_artifact
    from hpsearch.study import queue_retry

    cfg, study = tiny_study(tmp_path)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    earlier = optuna.storages.RetryHeartbeatStaleTrialCallback()  # as earlier versions queued
    inherited = []
    for queue in (lambda t: queue_retry(study, t, max_retry=None), lambda t: earlier(study, t)):
        dead = study.ask()
        upload_weights(dead, tmp_path, store)
        study.tell(dead, state=TrialState.FAIL)
        queue(study.trials[dead.number])
        retry = study.ask()
        inherited.append(sum(k.startswith(ARTIFACT_KEY_PREFIX)
                             for k in retry._cached_frozen_trial.system_attrs))
        own = upload_weights(retry, tmp_path, store)
        study.tell(retry, 0.5)
        assert weights_artifact(study.trials[retry.number], study) == own
        assert weights_artifact(study.trials[dead.number], study) not in (own, None)
    assert inherited == [0, 1]


def test_weights_named_by_an_older_store_are_found_and_not_inherited(tmp_path):
    from hpsearch.objective import start_trial
    from hpsearch.records import weights_artifact

    cfg, study = tiny_study(tmp_path)
    study.enqueue_trial({}, user_attrs={"weights": "abc"})
    trial = study.ask()
    assert weights_artifact(trial, study) == "abc"
    start_trial(trial, cfg, "cpu", "fp32")  # as a retry of such a trial starts
    assert "weights" not in {k for k, v in trial.user_attrs.items() if v is not None}
