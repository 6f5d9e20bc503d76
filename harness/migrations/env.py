"""Alembic's environment for the result store, which configures Alembic in code (no alembic.ini).

The store runs the migrations on its own connection, handed over as
``config.attributes["connection"]`` and already inside the transaction that holds its schema lock
(SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock). Alembic then opens no transaction of
its own, the store commits once it has checked the result, and a station opening the same new
database meanwhile waits for the lock and finds the schema done, never half made.

Without a connection, ``sqlalchemy.url`` is used: that is for a developer writing a revision
against a scratch store at head, e.g.::

    from alembic import command
    from harness.store import alembic_config
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", "sqlite:///scratch.sqlite")
    command.revision(config, "what changes and why", autogenerate=True, rev_id="0002")

Name revisions 0002, 0003, ... and never edit a released one: stations in the field are at it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from harness.store import metadata


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite can ALTER little: autogenerate writes batch operations (copy-and-move) for it
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():  # a no-op inside the store's transaction
        context.run_migrations()


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("harness/migrations/env.py needs config.attributes['connection'] "
                           "(as harness.store passes) or sqlalchemy.url")
    return url


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
    elif context.is_offline_mode():
        context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                _migrate(conn)
        finally:
            engine.dispose()


run()
