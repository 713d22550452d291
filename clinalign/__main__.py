"""``python -m clinalign``: the same as the ``clinalign`` command."""

from .cli import main

raise SystemExit(main())
