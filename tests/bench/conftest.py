"""The benchmark harness is run by hand (`python -m tests.bench`), never by pytest."""

collect_ignore_glob = ["*"]
