"""``python -m optlab.study``: a fair comparison of optimizers (see ``optlab.app.study`` and docs/studies.md)."""

from optlab.app.study.app import main

if __name__ == "__main__":
    main()
