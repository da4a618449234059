"""`python -m bitinglip.cli`: how `up` starts its own children."""

from bitinglip.cli import app

if __name__ == "__main__":  # importing it (a walk of the package) runs nothing
    app()
