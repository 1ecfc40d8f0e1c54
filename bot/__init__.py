"""mimochat's domain: settings, messages, conversations, formatting, channels and engines."""
