"""``python -m wandering``: the same command as the ``wandering`` console script."""

from wandering.cli import main

raise SystemExit(main())
