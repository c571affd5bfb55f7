"""Print the measured parity errors as markdown: one line per method, its worst error per
comparison, from the JSON lines that ``ANOMJAX_PARITY_REPORT`` makes the parity tests write.

    ANOMJAX_PARITY_REPORT=/tmp/parity.jsonl python -m pytest tests/parity
    python experiments/parity/table.py /tmp/parity.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    args = parser.parse_args()
    worst: dict[str, dict[str, float]] = defaultdict(dict)
    references: dict[str, str] = {}
    for line in args.report.read_text().splitlines():
        row = json.loads(line)
        errors = worst[row["method"]]
        errors[row["what"]] = max(errors.get(row["what"], 0.0), row["error"])
        references[row["method"]] = row["reference"]
    print("| method | reference | largest relative error per comparison |")
    print("|---|---|---|")
    for method in sorted(worst):
        cells = ", ".join(f"{what} {err:.1e}" for what, err in sorted(worst[method].items()))
        print(f"| {method} | {references[method]} | {cells} |")


if __name__ == "__main__":
    main()
