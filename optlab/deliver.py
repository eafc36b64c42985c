"""``python -m optlab.deliver``: write kept metrics to their MLflow run (see ``optlab.app.deliver``)."""

import sys

from optlab.app.deliver import main

if __name__ == "__main__":
    sys.exit(main())
