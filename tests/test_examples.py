"""The psql walk-through in sql/examples/ runs, as written, against a loaded database."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import synthetic

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "sql" / "examples").glob("*.sql"))


@pytest.fixture(scope="module")
def url(runner, tmp_path_factory):
    """A psql URL for the test database, with a small random model loaded as the default."""
    if shutil.which("psql") is None:
        pytest.fail("psql (the PostgreSQL client) is needed to run sql/examples: apt-get install postgresql-client")
    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("examples"), **synthetic.CONFIGS["tiny"], seed=2)
    assert runner(["load", str(directory), "--name", "examples"]).exit_code == 0
    result = runner(["db", "url", "--show-password"])
    return result.output.strip()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_in_psql(url, example):
    result = subprocess.run(["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(example)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{example.name} failed:\n{result.stderr}"
    assert "ERROR" not in result.stderr and "(0 rows)" not in result.stdout, result.stdout + result.stderr


def test_examples_cover_every_stage():
    names = " ".join(p.stem for p in EXAMPLES)
    for stage in ("tokenize", "embeddings", "attention", "next_token", "generate"):
        assert stage in names
