"""``python -m optlab.plugins``: list installed plugins (see ``optlab.app.plugins_cli``)."""

import sys

from optlab.commands import check_package

check_package()

from optlab.app.entry import command  # noqa: E402
from optlab.app.plugins_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(command(main))
