"""``python -m optlab.plugins``: list installed plugins (see ``optlab.app.plugins_cli``)."""

import sys

from optlab.app.entry import command
from optlab.app.plugins_cli import main

if __name__ == "__main__":
    sys.exit(command(main))
