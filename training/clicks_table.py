"""The clicks table (issue 32): what clicks do, per data set, from ``simseg evaluate`` JSONs.

For each evaluation (one data set, one refinement setting) it reports the mean foreground
Dice against clicks, the share of the 0-click error that 3 clicks remove (per class
``(D3 - D0) / (1 - D0)``, averaged over the classes), NoC@85/90/95 (mean over classes and
the worst class), the share of corrective rounds that left their slice worse, and the
share of a round's mislabelled pixels it removed (in its slice and in the regions its
clicks point at).

    python training/clicks_table.py OUT.json NAME=EVAL.json [NAME=EVAL.json ...]

writes ``OUT.json`` (the rows, with the evaluations' commands taken from their files) and
prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _fg(result: dict) -> list:
    return result["classes"][1:]


def summarise(result: dict) -> dict:
    """One row of the table from one evaluation result."""
    rows = {r["clicks"]: r for r in result["results"]}
    names = _fg(result)

    def mean_dice(k):
        vals = [rows[k]["dice"][c] for c in names if k in rows and rows[k]["dice"][c] is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    removed = []
    if 0 in rows and 3 in rows:
        for c in names:
            d0, d3 = rows[0]["dice"][c], rows[3]["dice"][c]
            if d0 is not None and d3 is not None and d0 < 1:
                removed.append((d3 - d0) / (1 - d0))
    out = {
        "data": result["data"], "checkpoint": result["checkpoint"], "n_volumes": result["n_volumes"],
        "refinement": result.get("refinement"),
        "dice": {str(k): mean_dice(k) for k in sorted(rows)},
        "dice_per_class": {str(k): rows[k]["dice"] for k in sorted(rows)},
        "error_removed_at_3": round(float(np.mean(removed)), 4) if removed else None,
    }
    if "noc" in result:
        for thr in ("0.85", "0.9", "0.95"):
            means = [result["noc"][thr][c]["mean"] for c in names if result["noc"][thr][c]["mean"] is not None]
            out[f"noc_{thr}"] = round(float(np.mean(means)), 2) if means else None
            out[f"noc_{thr}_worst"] = round(float(np.max(means)), 2) if means else None
    if "rounds" in result:
        for part in ("first_3", "all"):
            out[f"rounds_{part}"] = result["rounds"][part]
    return out


def markdown(rows: dict) -> str:
    head = ("| Data, rounds | Dice 0 / 1 / 2 / 3 / 5 / 10 clicks | error removed at 3 "
            "| NoC@85 / 90 / 95 (worst class @90) | rounds worse (1-3) | error removed per round: slice / clicked |")
    lines = [head, "|---|---|---:|---|---:|---|"]
    for name, r in rows.items():
        ks = ("0", "1", "2", "3", "5", "10")
        dice = " / ".join("-" if r["dice"].get(k) is None else f"{r['dice'][k]:.3f}" for k in ks)
        noc = " / ".join("-" if r.get(f"noc_{t}") is None else f"{r[f'noc_{t}']:.1f}" for t in ("0.85", "0.9", "0.95"))
        worst = "" if r.get("noc_0.9_worst") is None else f" ({r['noc_0.9_worst']:.1f})"
        f3 = r.get("rounds_first_3") or {}
        worse = "-" if not f3.get("n") else f"{100 * f3['worse']:.1f} %"
        per = "-" if not f3.get("n") else f"{100 * f3['removed']:.0f} % / {100 * f3['clicked_removed']:.0f} %"
        rem = "-" if r["error_removed_at_3"] is None else f"{100 * r['error_removed_at_3']:.0f} %"
        lines.append(f"| {name} | {dice} | {rem} | {noc}{worst} | {worse} | {per} |")
    return "\n".join(lines)


def main(argv: list) -> int:
    out, pairs = Path(argv[0]), argv[1:]
    rows = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        rows[name] = summarise(json.loads(Path(path).read_text()))
    out.write_text(json.dumps({"command": "bash training/clicks_results.sh", "rows": rows}, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
