"""The benchmark code runs on a tiny setting (its figures come from `make bench`, not tests)."""

from __future__ import annotations

import json

from conftest import hpsearch


def test_bench_runs_both_parts_and_writes_its_table(tmp_path):
    out = hpsearch("bench", "--trials", 1, "--repeats", 1, "--epochs", 1, "--out", tmp_path,
                   timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert set(result) == {"throughput", "study"}
    assert all(v > 0 for v in result["throughput"]["median"].values())
    assert result["study"]["runs"][0]["hpsearch"]["states"]
    table = (tmp_path / "bench.md").read_text()
    assert "Training throughput" in table and "Median wall time" in table
