"""``python -m lleval``: the same CLI as the ``lleval`` console script."""

from lleval.cli import main

if __name__ == "__main__":
    main()
