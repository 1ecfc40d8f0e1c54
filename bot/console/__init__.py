"""The admin console's read models, the doctor's checks, live stats and worker heartbeats."""
