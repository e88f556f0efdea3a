"""Bulk inserts for the consent gate: ``schema.bulk.insert_rows`` (kept here for its callers)."""

from schema.bulk import insert_rows

__all__ = ["insert_rows"]
