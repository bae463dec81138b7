"""PyInstaller entry point for ``berthd`` (the per-user VM daemon)."""

import sys

from vm_backend.daemon.server import main

if __name__ == "__main__":
    sys.exit(main())
