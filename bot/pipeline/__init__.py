"""The shared use cases every channel runs: ingest (dedupe, commands, enqueue), answer, history."""
