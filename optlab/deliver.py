"""``python -m optlab.deliver``: write kept metrics to their MLflow run (see ``optlab.app.deliver``)."""

import sys

from optlab.app.deliver import main
from optlab.app.entry import skip_final_collection

if __name__ == "__main__":
    status = main()
    skip_final_collection()
    sys.exit(status)
