"""The model worker process: warm engines behind an internal HTTP API and a Prefect task worker."""
