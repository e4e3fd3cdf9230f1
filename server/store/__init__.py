"""Durable state under `--state-dir`: one SQLite database (WAL) and a folder of file contents."""
