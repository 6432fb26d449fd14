"""Keep a model's GRANTs when it is loaded again.

A load builds the new tables in a fresh schema and renames it over the old one, and
privileges belong to objects, not names: without this, a read-only role that was granted
USAGE on model_gpt2 and SELECT on its tables would lose them at every reload. The copy
runs inside the load's transaction, so the new schema appears with its grants at once.
(Models loaded for the first time get theirs from ALTER DEFAULT PRIVILEGES: docs/operations.md.)
"""

from __future__ import annotations

from psycopg import sql

# what aclexplode() reports for schemas and tables; anything else is refused, not spliced
PRIVILEGES = {"USAGE", "CREATE", "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
              "MAINTAIN"}


def copy_grants(conn, old_schema: str, new_schema: str) -> None:
    """GRANT on new_schema (and its tables, by name) what was granted on old_schema and its tables.

    The owner's own entries are skipped: the new objects have an owner of their own."""
    rows = conn.execute(
        """SELECT NULL::text AS tbl, a.privilege_type, a.is_grantable,
                  CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee
           FROM pg_namespace n, aclexplode(n.nspacl) a
           WHERE n.nspname = %(old)s AND a.grantee <> n.nspowner
           UNION ALL
           SELECT c.relname, a.privilege_type, a.is_grantable,
                  CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
           WHERE n.nspname = %(old)s AND c.relkind = 'r' AND a.grantee <> c.relowner
             AND to_regclass(format('%%I.%%I', %(new)s::text, c.relname)) IS NOT NULL""",
        {"old": old_schema, "new": new_schema},
    ).fetchall()
    for table, privilege, grantable, grantee in rows:
        if privilege not in PRIVILEGES:
            continue
        target = (sql.SQL("SCHEMA {}").format(sql.Identifier(new_schema)) if table is None
                  else sql.SQL("TABLE {}").format(sql.Identifier(new_schema, table)))
        conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), target, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
