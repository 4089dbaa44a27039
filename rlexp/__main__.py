"""``python -m rlexp``: see :mod:`rlexp.cli`."""

from rlexp.cli import main

if __name__ == "__main__":
    main()
