"""``python -m optlab.compare``: compare logged runs (see ``optlab.app.compare``)."""

import sys

from optlab.app.compare import main
from optlab.app.entry import command

if __name__ == "__main__":
    sys.exit(command(main))
