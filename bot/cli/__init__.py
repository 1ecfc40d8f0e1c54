"""The `mimochat` command line and the supervisor: the one place that starts adapters."""
