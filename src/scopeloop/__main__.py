"""`python -m scopeloop` runs the command line."""

from scopeloop.cli import main

main()
