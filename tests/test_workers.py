"""Four worker processes on one study: SQLite, a journal file and the real PostgreSQL server."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, states
from test_postgres import URL, postgres_study  # noqa: F401 (a fixture)

WORKERS, TARGET = 4, 12


def check_workers_run(out, storage, name: str) -> None:
    assert out.returncode == 0, out.stderr
    assert "locked" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    counts = states(study)
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    # The target is reached, overshooting by at most the other workers' running trials.
    assert TARGET <= finished <= TARGET + WORKERS - 1, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
    assert counts.get("FAIL", 0) == 0
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params), "two trials share their parameters"
    owners = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert len(owners) > 1, "one process ran every trial"
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_four_workers_on_one_file_store(study_file, tmp_path, kind):
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    out = run_cli("--config", study_file, "--storage", url, "--trials", TARGET,
                  "--workers", WORKERS)
    if kind == "sqlite":
        storage = url
    else:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log")))
    check_workers_run(out, storage, "tiny")


def test_four_workers_on_postgresql(study_file, postgres_study):  # noqa: F811
    out = run_cli("--config", study_file, "--storage", URL, "--study-name", postgres_study,
                  "--trials", TARGET, "--workers", WORKERS)
    check_workers_run(out, URL.replace("postgresql://", "postgresql+psycopg://"), postgres_study)
