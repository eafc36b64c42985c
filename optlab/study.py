"""``python -m optlab.study``: a fair comparison of optimizers (see ``optlab.app.study`` and docs/studies.md)."""

from optlab.commands import check_package

check_package()

from optlab.app.entry import main as _entry  # noqa: E402
from optlab.app.study.app import main as _study  # noqa: E402


def main(argv=None) -> None:
    """The study's command, with optlab's handling of Ctrl-C and SIGTERM from the very start."""
    _entry(argv, app=_study)


if __name__ == "__main__":
    main()
