"""``python -m mcdrop`` runs the command line."""

from mcdrop.cli import main

raise SystemExit(main())
