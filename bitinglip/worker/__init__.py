"""The model worker process: warm engines behind an internal HTTP API and a job pump that runs async jobs."""
