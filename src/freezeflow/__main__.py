"""``python -m freezeflow``: the command line (see :mod:`freezeflow.cli`)."""

from freezeflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
