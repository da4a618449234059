"""`python -m bitinglip.cli`: how `up` starts its own children."""

from bitinglip.cli import app

app()
