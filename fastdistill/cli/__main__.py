import sys

from . import main

if __name__ == "__main__":  # also imported by tools that import every module
    sys.exit(main())
