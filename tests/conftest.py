"""Shared helpers: tiny study files, the CLI as a subprocess, and reads of a real store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "run_study.py"), "--quiet", "--device", "cpu"]

# 8-pixel digits, one or two conv blocks of at most 8 channels: a trial takes well under a
# second on a CPU, yet it is the real trainer on real images.
TINY_STUDY = """
[study]
name = "tiny"
trials = 3
sampler = "tpe"
pruner = "median"
seed = 0

[data]
dataset = "digits"
image_size = 8

[train]
epochs = 2
batch_size = 64

[space]
lr = { low = 1e-3, high = 1e-1, log = true }
depth = { low = 1, high = 2 }
width = { low = 4, high = 8, log = true }
dropout = { low = 0.0, high = 0.3 }
optimizer = ["adam", "sgd"]
"""


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Datasets and splits are cached per user; the tests keep their own, so that a session
    both computes them and reads them back, whatever the user's cache holds."""
    os.environ["HPSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HPSEARCH_") or k == "HPSEARCH_CACHE_DIR"}
    env.update({"PYTHONUNBUFFERED": "1"}, **extra)
    return env


def run_cli(*args, cwd: Path = ROOT, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """`python run_study.py ARGS` (or `-m hpsearch.cli` for other commands) as a user runs it."""
    cmd = [*RUN, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**env))


def hpsearch(*args, cwd: Path = ROOT, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """`hpsearch COMMAND ARGS` for the commands besides run."""
    cmd = [sys.executable, "-m", "hpsearch.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**env))


def start_cli(*args, **env) -> subprocess.Popen:
    cmd = [*RUN, *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(**env))


def load(store: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=store)


def states(study: optuna.Study) -> dict:
    counts: dict = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts
