"""`python -m agent.cli`: the `bulwark` command line."""

from agent.cli import main

main()
