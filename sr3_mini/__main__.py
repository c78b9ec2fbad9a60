"""``python -m sr3_mini ...``: the same command line as ``sr3-mini`` (see ``sr3_mini.cli``)."""
from sr3_mini.cli import main

raise SystemExit(main())
