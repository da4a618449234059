"""BitingLip: AI inference as tracked jobs."""

__version__ = "0.1.0"
