"""``python -m optlab.deliver``: write kept metrics to their MLflow run (see ``optlab.app.deliver``)."""

import sys

from optlab.app.deliver import main
from optlab.app.entry import command

if __name__ == "__main__":
    sys.exit(command(main))
