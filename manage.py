#!/usr/bin/env python
"""Django's command-line utility for Tollgate."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
    if sys.argv[1:2] == ["quickstart"]:
        # The quickstart is a trial on a laptop: debug mode spares the user a
        # secret key. Production sets DJANGO_SECRET_KEY and leaves DEBUG off.
        os.environ.setdefault("DJANGO_DEBUG", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
