"""Connectors: one small interface per kind of store (SQL databases, object stores)."""
