"""``python -m optlab``: run an experiment (see ``optlab.app.main``)."""

from optlab.app.entry import main

if __name__ == "__main__":
    main()
