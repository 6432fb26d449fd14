"""The documentation and the database agree on the SQL functions.

docs/architecture.md's stage table lists every function, aggregate and procedure of the gpt2
schema by the file that defines it. The database, with the schema applied from this
checkout's sql/, must hold exactly those, and each must be defined in the file its row
names. And every `gpt2.name` the README or a page of docs/ mentions must exist in the
database: a function, a table, a view or a type of the gpt2 schema.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_functions() -> dict[str, str]:
    """{function name: its file} from the stage table: rows whose first cell is a file of sql/."""
    table = ARCHITECTURE.read_text().split("## SQL stage files", 1)[1].split("\n## ", 1)[0]
    listed: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        file = re.fullmatch(r"`(\d\d_\w+\.sql)`", cells[0]) if line.startswith("|") else None
        if not file:
            continue
        for name in re.findall(r"`(\w+)`", " ".join(cells[2:])):
            assert name not in listed, f"docs/architecture.md lists {name} twice ({listed[name]}, {file[1]})"
            listed[name] = file[1]
    assert len(listed) > 100, f"the stage table of docs/architecture.md lists only {len(listed)} functions"
    return listed


def test_the_stage_table_lists_every_function_of_the_database_and_no_other(conn):
    in_database = {name for (name,) in conn.execute(
        "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'gpt2'::regnamespace")}
    documented = set(documented_functions())
    undocumented, missing = sorted(in_database - documented), sorted(documented - in_database)
    assert not undocumented and not missing, (
        f"docs/architecture.md's stage table and the gpt2 schema disagree:\n"
        f"  in the database, listed nowhere: {', '.join(undocumented) or '(none)'}\n"
        f"  listed, not in the database: {', '.join(missing) or '(none)'}")


def defines(text: str, name: str) -> bool:
    """Whether a file of sql/ creates gpt2.name, directly or through an unrolled template
    (gpt2.linear_%G makes linear_2, linear_4, ...)."""
    unrolled = re.fullmatch(r"(\w+_)\d+", name)
    names = re.escape(name) + (f"|{re.escape(unrolled[1])}%G" if unrolled else "")
    return re.search(rf"CREATE (OR REPLACE )?(FUNCTION|PROCEDURE|AGGREGATE) gpt2\.({names})\(", text) is not None


def test_each_function_is_defined_in_the_file_its_row_names():
    wrong = [f"{name} ({file})" for name, file in documented_functions().items()
             if not defines((ROOT / "sql" / file).read_text(), name)]
    assert not wrong, f"docs/architecture.md names a file that does not define: {', '.join(wrong)}"


def test_every_gpt2_name_the_docs_mention_exists(conn):
    known = {name for (name,) in conn.execute(
        """SELECT proname FROM pg_proc WHERE pronamespace = 'gpt2'::regnamespace
           UNION SELECT relname FROM pg_class WHERE relnamespace = 'gpt2'::regnamespace
           UNION SELECT typname FROM pg_type WHERE typnamespace = 'gpt2'::regnamespace""")}
    unknown = sorted({f"gpt2.{name} ({doc.relative_to(ROOT)})" for doc in DOCS
                      for name in re.findall(r"(?<![\w.-])gpt2\.(\w+)", doc.read_text()) if name not in known})
    assert not unknown, f"the docs mention what the gpt2 schema does not have: {', '.join(unknown)}"
