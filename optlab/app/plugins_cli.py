"""``python -m optlab.plugins``: what is installed — plugin distributions, every name by kind, failures.

python -m optlab.plugins            # a table
python -m optlab.plugins --json     # the same as data (``optlab.plugins.report()``)
"""

from __future__ import annotations

import argparse
import json
import warnings

from .. import plugins


def format_report(data: dict) -> str:
    """``optlab.plugins.report()`` as the table the command prints."""
    lines = ["Plugin distributions:"]
    width = max((len(d) for d in data["distributions"]), default=0)
    own_first = sorted(data["distributions"].items(), key=lambda kv: (plugins.normalize(kv[0]) != plugins.OWN, kv[0]))
    for dist, info in own_first:
        eps = ", ".join(info["entry_points"]) or "(nothing loaded)"
        lines.append(f"  {dist:<{width}}  {info['version']:<10} {eps}")
    for kind, rows in data["components"].items():
        lines.append(f"\n{kind.capitalize()} ({len(rows)}):")
        if not rows:
            lines.append("  (none registered)")
        name_width = max((len(r["name"]) for r in rows), default=0)
        for row in rows:
            lines.append(f"  {row['name']:<{name_width}}  {row['distribution']}")
    if data["failures"]:
        lines.append("\nFailed:")
        for row in data["failures"]:
            lines.append(f"  {row['distribution']}: {row['what']}: {row['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optlab.plugins", description="List installed optlab plugins and every registered name."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", plugins.PluginWarning)  # failures are part of the report below
        data = plugins.report()
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0
