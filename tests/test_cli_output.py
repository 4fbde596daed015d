"""What `best`, `compare` and `status` print: a summary, the full record on request, one line
for a comparison of one study, and times with their offset from UTC."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from conftest import hpsearch, load


def snapshot(folder) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A store holding a finished tiny study: (folder, study file, store URL)."""
    from conftest import finished_tiny_study

    folder = tmp_path_factory.mktemp("cli")
    return (folder, *finished_tiny_study(folder, 3))


def test_best_prints_a_summary_and_json_on_request(done):
    folder, config, store = done
    best = load(store).best_trial
    out = hpsearch("best", "--config", config, "--storage", store)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["Study                'tiny'", f"Trial                {best.number}",
                         f"Validation accuracy  {best.value:.4f}"]
    assert lines[3].startswith("Test accuracy        not measured yet")
    for name, value in best.params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        assert f"  {name:<18} {shown}" in lines
    assert str(folder / "reports" / "tiny" / "best_config.json") in out.stdout
    assert "{" not in out.stdout

    record = hpsearch("best", "--json", "--config", config, "--storage", store)
    assert record.returncode == 0, record.stderr
    full = json.loads(record.stdout)
    assert full["trial"] == best.number and full["params"]["lr"] == best.params["lr"]
    assert full["config"]["study"]["name"] == "tiny"
    assert all(full[k] is None for k in ("test_accuracy", "test_size", "confusion_matrix"))


@pytest.mark.parametrize("studies", [["tiny"], ["tiny", "tiny"]])
def test_compare_of_one_study_says_what_it_is_for_and_writes_nothing(done, studies):
    folder, _, store = done
    before = snapshot(folder)
    out = hpsearch("compare", *studies, "--storage", store)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == ("hpsearch: error: compare overlays two or more studies of one store; "
                          "got one: 'tiny'. Run `hpsearch report` for a single study.\n")
    assert snapshot(folder) == before


@pytest.mark.parametrize("tz, offset, zone", [("UTC0", 0, "UTC"),
                                              ("IST-5:30", 330, "UTC+05:30"),
                                              ("BRT+3", -180, "UTC-03:00")])
def test_status_prints_times_with_their_offset_from_utc(done, tz, offset, zone):
    """Optuna stores UTC and hands back this process's local time: the instant is the same
    whatever zone `status` runs in; only its offset changes."""
    _, _, store = done
    trials = load(store).trials
    last = max(t.datetime_complete or t.datetime_start for t in trials)
    instant = last.astimezone(timezone.utc)  # naive local time of this process, as Optuna gave
    shown = (instant + timedelta(minutes=offset)).replace(tzinfo=None)
    out = hpsearch("status", "--storage", store, TZ=tz)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("tiny "))
    assert row.endswith(f"{shown:%Y-%m-%d %H:%M:%S} {zone}"), row
    assert abs(datetime.now(timezone.utc) - instant) < timedelta(hours=1)


def test_the_result_commands_take_the_run_commands_set(done):
    """`--set study.name=...` finds the study as it found it for `run`; a bad key is one line."""
    folder, _, store = done
    out = hpsearch("best", "--set", "study.name='tiny'", "--storage", store)
    assert out.returncode == 0 and out.stdout.startswith("Study                'tiny'"), out.stderr
    before = snapshot(folder)
    bad = hpsearch("report", "--set", "study.nme='tiny'", "--storage", store)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("hpsearch: error: ") and "study.nme" in bad.stderr
    assert snapshot(folder) == before
