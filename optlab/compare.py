"""``python -m optlab.compare``: compare logged runs (see ``optlab.app.compare``)."""

import sys

from optlab.commands import check_package

check_package()

from optlab.app.compare import main  # noqa: E402
from optlab.app.entry import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command(main))
