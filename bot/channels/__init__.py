"""One folder per platform: its protocol, use cases, delivery, API client and sandbox."""
