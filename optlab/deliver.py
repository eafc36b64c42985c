"""``python -m optlab.deliver``: write kept metrics to their MLflow run (see ``optlab.app.deliver``)."""

import sys

from optlab.commands import check_package

check_package()

from optlab.app.deliver import main  # noqa: E402
from optlab.app.entry import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command(main))
