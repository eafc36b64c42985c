"""``python -m optlab``: run an experiment (see ``optlab.app.main``)."""

from optlab.commands import check_package

check_package()

from optlab.app.entry import main  # noqa: E402

if __name__ == "__main__":
    main()
