"""Gateway state (jobs, workers, models) in SQLAlchemy: SQLite embedded, PostgreSQL scaled out."""
