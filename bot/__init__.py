"""mimochat's domain, free of web and queue code: core, pipeline, channels, text, engine, console, cli."""
