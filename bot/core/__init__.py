"""What every part shares: settings, typed contracts, the Redis store, logs, metrics, job timelines."""
