"""``python -m selfsup`` (and ``torchrun -m selfsup``) runs the command line."""

from .cli import main

raise SystemExit(main())
