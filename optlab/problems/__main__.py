"""``python -m optlab.problems``: every registered problem (built-in and plugins') with what it declares.

python -m optlab.problems            # a table: size class, budget, target, metrics
python -m optlab.problems --json     # the same as data (``Problem.metadata()`` per name)
"""

from __future__ import annotations

import argparse
import json

from . import registry


def report() -> dict:
    """``{name: {"distribution": ..., "metrics": {logged name: direction}, **Problem.metadata()}}``
    for every registered problem (built with its default arguments)."""
    out = {}
    for name in registry.names():
        problem = registry.create(name)
        meta = problem.metadata()
        del meta["metric_directions"]  # (the class's, inherited ones included): what it logs says it better
        out[name] = {"distribution": registry.source(name), "metrics": problem.metrics(), **meta}
    return out


def format_report(data: dict) -> str:
    def metrics(meta):
        arrows = {"min": " ↓", "max": " ↑", None: ""}
        return ", ".join(f"{k}{arrows[v]}" for k, v in meta["metrics"].items())

    def budget(meta):
        b = meta["budget"]
        return f"{b['epochs']} epochs" + ("" if b["batch_size"] is None else f" x batch {b['batch_size']}")

    rows = [("problem", "size", "budget", "target", "metrics (↓ lower is better, ↑ higher)")]
    for name, meta in data.items():
        target = meta["target"]["text"] if meta["target"] else "-"
        rows.append((name, meta["size_class"], budget(meta), target, metrics(meta)))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.append("\nsize: tiny < 1 s per run, small < 10 s, medium < 1 min on 2 cores (at the budget).")
    lines.append("How each target was measured: python -m optlab.problems --json, or docs/problems.md.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optlab.problems", description="List the registered problems and what each declares."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    data = report()
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


if __name__ == "__main__":
    from optlab.commands import command

    raise SystemExit(command(main))
