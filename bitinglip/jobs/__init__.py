"""Async jobs: accepted durably in the gateway DB, dispatched to Prefect in groups, run by workers."""
