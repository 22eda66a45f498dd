"""`python -m glyph_rt ...`: the command line, as `glyph-rt ...`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
