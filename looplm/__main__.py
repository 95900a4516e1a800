"""`python -m looplm ...` is the same as the `looplm ...` console script."""

import sys

from looplm.cli import main

if __name__ == "__main__":
    sys.exit(main())
