"""Sweep reports: the same rows for the Prefect table artifact, the CLI table and `--json`."""

from __future__ import annotations

from collections.abc import Iterable

from pollcat.pipeline import Outcome

COLUMNS = ["download_id", "user", "transport", "files", "bytes", "seconds", "MB/s", "outcome",
           "reason"]


def table_rows(outcomes: Iterable[Outcome]) -> list[dict]:
    rows = []
    for o in outcomes:
        row = o.row()
        rows.append({k: row[k] for k in COLUMNS} | {"path": o.path})
    return rows


def format_table(outcomes: Iterable[Outcome]) -> str:
    return format_rows(table_rows(outcomes))


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of report rows (the CLI's and the demo's output)."""
    if not rows:
        return "nothing to do"
    cols = COLUMNS + ["path"]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [min(60, max(len(c), *(len(row[i]) for row in cells))) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(v[:w].ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(out)
