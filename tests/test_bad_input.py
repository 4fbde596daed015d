"""Bad input gets one line on stderr, exit status 2, no traceback, and the store untouched."""

from __future__ import annotations

import hashlib

import optuna
import pytest

from conftest import TINY_STUDY, hpsearch, load, run_cli


def snapshot(store: str) -> list:
    study = load(store)
    return [study.user_attrs] + [
        (t.number, t.state, t.params, t.value, t.user_attrs, t.intermediate_values)
        for t in study.trials
    ]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store holding one finished study, made once for every case below."""
    folder = tmp_path_factory.mktemp("bad-input")
    config = folder / "tiny.toml"
    config.write_text(TINY_STUDY)
    (folder / "flat.toml").write_text('study = "tiny"\n')
    store = f"sqlite:///{folder / 'store.db'}"
    out = run_cli("--config", config, "--storage", store, "--trials", 2)
    assert out.returncode == 0, out.stderr
    return folder, config, store


CASES = {
    "typo in a flag": (["--trails", "5"], "unrecognized arguments: --trails"),
    "negative trial count": (["--trials", "-3"], "--trials: must be at least 1"),
    "trial count not a number": (["--trials", "many"], "expected a whole number"),
    "unknown dataset": (["--set", "data.dataset='imagenet'"], "data.dataset must be one of"),
    "low above high": (["--set", "space.lr={low=0.1, high=0.01}"], "low must be below high"),
    "unknown parameter": (["--set", "space.depht=3"], "unknown parameter space.depht"),
    "unknown augmentation": (["--set", "train.augment=['rotate']"],
                             "unknown augmentation 'rotate'"),
    "unknown head": (["--set", "space.head='avg'"], "space.head must be flatten | gap"),
    "augment set twice": (["--set", "train.augment=['flip']", "--set", "space.augment='none'"],
                          "augment is set both in [train] and in [space]"),
    "unknown key": (["--set", "train.epoch=3"], "unknown key train.epoch"),
    "bad override": (["--set", "epochs"], "--set expects section.key=value"),
    "grid without step": (["--set", "study.sampler='grid'"], "needs a list or a step"),
    "missing config": (["--config", "{folder}/nope.toml"], "nope.toml does not exist"),
    "config not TOML": (["--config", "{folder}/store.db"], "is not valid TOML"),
    "unreadable storage URL": (["--storage", "nosuchdb://x"], "is not a storage URL"),
    "store that is not a database": (["--storage", "sqlite:///{folder}/tiny.toml"],
                                     "is not an SQLite database"),
    "cuda where there is none": (["--device", "cuda"], "CUDA is not available"),
    "unknown device": (["--device", "tpu"], "--device"),
    "changed settings on resume": (["--epochs", "3"], "train.epochs was 2, now 3"),
    "missing data folder": (["--set", "data.dataset='folder:{folder}/none'"], "does not exist"),
    "abbreviated flag": (["--epoch", "3"], "unrecognized arguments: --epoch"),
    "port not a number": (["--storage", "postgresql://u@127.0.0.1:abc/db"], "not a storage URL"),
    "journal that is a folder": (["--storage", "journal:{folder}"], "is a folder"),
    "journal that is another file": (["--storage", "journal:{folder}/tiny.toml"],
                                     "is not an Optuna journal file"),
    "seed past 32 bits": (["--seed", "4294967296"], "study.seed must be 0..4294967295"),
    "section that is a value": (["--config", "{folder}/flat.toml"], "[study] must be a table"),
    "backup that is a file": (["--backup", "{folder}/tiny.toml"], "is a file; pass a folder"),
    "backup into the store's folder": (["--backup", "{folder}"], "the store's own folder"),
    "unknown precision": (["--set", "train.precision='fp8'"], "train.precision must be one of"),
    "fp16 on the CPU": (["--set", "train.precision='fp16'", "--device", "cpu"],
                        "fp16 needs a CUDA device"),
    "time not a duration": (["--time", "abc"], "argument --time: expected a duration above "
                            "zero: 90 (seconds), 300s, 20m, 1.5h or 1h30m; got 'abc'"),
    "negative time": (["--time", "-5m"], "argument --time: expected a duration above zero"),
    "no time in the file": (["--set", "study.time='0s'"],
                            "study.time must be a duration above zero: 90 (seconds), 300s, "
                            "20m, 1.5h or 1h30m; got '0s'"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_and_exit_2(stored, case):
    folder, config, store = stored
    args, expected = CASES[case]
    args = [a.replace("{folder}", str(folder)) for a in args]
    before = snapshot(store)
    base = ["--config", config, "--storage", store, "--trials", 3]
    # Flags given later win, so each case overrides the working base command.
    out = run_cli(*base, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    assert snapshot(store) == before


def test_passwords_are_never_printed():
    out = run_cli("--storage", "postgresql://alice:s3cret@127.0.0.1:1/nodb", "--trials", 1,
                  "--epochs", 1, "--set", "data.image_size=8")
    assert out.returncode == 2
    assert "s3cret" not in out.stdout + out.stderr
    assert "***" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_refused_resume_leaves_the_store_file_as_it_was(tmp_path, study_file):
    db = tmp_path / "other.db"
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = run_cli("--config", study_file, "--storage", f"sqlite:///{db}")
    assert out.returncode == 2 and "was not made by hpsearch" in out.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (tmp_path / "other.db-wal").exists()


def test_a_weights_folder_that_does_not_exist_is_named_not_taken_for_none(stored, tmp_path):
    """Without --artifacts a missing folder means a study without weights; a folder the user
    names is a typo when it does not exist."""
    _, _, store = stored
    before = snapshot(store)
    out = hpsearch("report", "--storage", store, "--study-name", "tiny", "--artifacts",
                   tmp_path / "nope", "--out", tmp_path / "report")
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--artifacts" in lines[0] and "no such folder" in lines[0], lines
    assert not (tmp_path / "nope").exists() and not (tmp_path / "report").exists()
    assert snapshot(store) == before


def test_a_report_folder_that_cannot_be_made_is_one_line(stored, tmp_path):
    _, _, store = stored
    before = snapshot(store)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = hpsearch("report", "--storage", store, "--study-name", "tiny", "--out",
                   blocker / "report")
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the report into" in lines[0], lines
    assert snapshot(store) == before
