"""The runner on the real PostgreSQL server: the same command, only the storage URL differs."""

from __future__ import annotations

import os
import uuid

import optuna
import pytest
import sqlalchemy

from conftest import run_cli, states

URL = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_answers() -> bool:
    try:
        with sqlalchemy.create_engine(URL.replace("postgresql://", "postgresql+psycopg://"),
                                      connect_args={"connect_timeout": 3}).connect():
            return True
    except sqlalchemy.exc.OperationalError:
        return False


@pytest.fixture
def postgres_study():
    if not postgres_answers():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no PostgreSQL server answers at {URL}; CI needs one")
        pytest.skip(f"no PostgreSQL server answers at {URL}")
    name = f"hpsearch-test-{uuid.uuid4().hex[:12]}"
    yield name
    storage = optuna.storages.RDBStorage(URL.replace("postgresql://", "postgresql+psycopg://"))
    if name in optuna.get_all_study_names(storage=storage):
        optuna.delete_study(study_name=name, storage=storage)
    storage.remove_session()
    storage.engine.dispose()


def test_study_runs_and_resumes_on_postgresql(study_file, postgres_study, tmp_path):
    # A database server has no store file to put the weights and checkpoints beside: they go
    # under the working folder's studies/, so the run works in the test's own folder.
    args = ("--config", study_file, "--storage", URL, "--study-name", postgres_study)
    assert run_cli(*args, "--trials", 2, cwd=tmp_path).returncode == 0
    out = run_cli(*args, "--trials", 3, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name=postgres_study,
                              storage=URL.replace("postgresql://", "postgresql+psycopg://"))
    assert states(study) == {"COMPLETE": 3}
    assert "Store: postgresql+psycopg://postgres@127.0.0.1:5432/test" in out.stdout
    assert len(list((tmp_path / "studies" / "artifacts").iterdir())) == 3  # a weight file each
