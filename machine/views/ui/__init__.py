"""The web UI (`mlsm ui`, `mlsm watch --ui PORT`): read-only pages over the files, plus actions
that touch the same files a person would (STOP, RETRY, a new IDEA.md). Needs `mlsm[ui]`."""
