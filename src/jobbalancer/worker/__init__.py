"""The worker: registers, heartbeats, picks up assigned jobs and runs them."""
