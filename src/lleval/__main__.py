"""``python -m lleval`` runs the CLI (``lleval``)."""

from lleval.cli import entry

if __name__ == "__main__":
    entry()
