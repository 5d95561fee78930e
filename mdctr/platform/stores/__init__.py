"""Versioned columnar stores (Parquet + an atomically committed manifest, DuckDB-queryable)."""
