"""``python -m optlab.compare``: compare logged runs (see ``optlab.app.compare``)."""

import os
import sys

from optlab.app.compare import main
from optlab.app.entry import skip_final_collection

if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()  # (a reader gone is found here at the latest)
    except BrokenPipeError:  # `python -m optlab.compare | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's own flush at exit)
        status = 1
    skip_final_collection()
    sys.exit(status)
