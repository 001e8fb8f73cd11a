"""`python -m daemon` runs the ripeye command line."""

from daemon.cli import main

raise SystemExit(main())
