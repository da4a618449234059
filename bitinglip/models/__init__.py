"""Models: the catalog of known models, sources to fetch them from, and the on-disk store."""
