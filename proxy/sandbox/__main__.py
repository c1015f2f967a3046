"""`python -m proxy.sandbox`: serve the sandbox provider without loading Django."""
from __future__ import annotations

from proxy.sandbox.cli import main

main()
