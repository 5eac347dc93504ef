"""Read-only views of experiments: status, logs, the live table, the health check, diffs."""
