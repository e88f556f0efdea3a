"""Core ``Table``s of the rows that read-only CLI commands list, defined without the ORM.

``schema.models`` maps these tables (declarative with an imperative table), so there is one
definition; a command that only reads (``org list``, ``dsr list``, ``consent show``) queries them
on a connection and never imports ``sqlalchemy.orm``, which alone costs about a third of
``python -c "import sqlalchemy, typer"``.
"""
