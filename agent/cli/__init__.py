"""The `bulwark` command line (contract section 2): one module per command group, the shared
helpers in `common`, the app and `main()` in `main`.

Errors are one line on stderr and a non-zero exit; `--debug` (before the command) shows the
traceback as well.
"""

from agent.cli.main import app, main

__all__ = ["app", "main"]
