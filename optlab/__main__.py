"""``python -m optlab``: run an experiment (see ``optlab.app.main``)."""

from optlab.app.main import main

if __name__ == "__main__":
    main()
