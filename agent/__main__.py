"""`python -m agent`: the `bulwark` command line."""

from agent.cli import main

main()
