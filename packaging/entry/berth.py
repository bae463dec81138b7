"""PyInstaller entry point for ``berth`` (the window with no arguments, else the CLI)."""

import sys

from vm_backend.cli import main

if __name__ == "__main__":
    sys.exit(main())
