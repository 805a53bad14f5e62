"""``python -m kdmkb``: the command line."""

from kdmkb.services.cli import main

main()
