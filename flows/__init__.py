"""Prefect flows and tasks: thin, typed, retries on the decorator, logic in `bitinglip/`."""
