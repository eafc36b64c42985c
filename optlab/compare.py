"""``python -m optlab.compare``: compare logged runs (see ``optlab.app.compare``)."""

import sys

from optlab.app.compare import main
from optlab.app.entry import skip_final_collection

if __name__ == "__main__":
    status = main()
    skip_final_collection()
    sys.exit(status)
