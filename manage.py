#!/usr/bin/env python
"""Django's command-line utility for Ops-Core."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscore_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    from opscore_site.env import mark_secretless_command

    mark_secretless_command(sys.argv)
    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A missing secret or a mistyped variable: the message names it; a traceback only buries it.
        if "--traceback" in sys.argv:
            raise
        sys.stderr.write(f"ImproperlyConfigured: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
