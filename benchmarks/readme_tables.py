"""Copy the studies' tables (benchmarks/results/*.md) into the README, between their markers.

    python benchmarks/readme_tables.py [--check]      (make readme-tables)

Each table sits in the README between ``<!-- begin: benchmarks/results/NAME.md -->`` and
``<!-- end: benchmarks/results/NAME.md -->``. ``--check`` changes nothing and exits 1 if the README differs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- begin: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def splice(readme: str, root: Path = ROOT) -> str:
    """The README with every marked block replaced by the file it names; every results file must be marked."""
    named = {m["name"] for m in BLOCK.finditer(readme)}
    unmarked = sorted(str(p.relative_to(root)) for p in (root / "benchmarks" / "results").glob("*.md")
                      if str(p.relative_to(root)) not in named)
    if unmarked:
        raise SystemExit(f"README.md has no markers for {', '.join(unmarked)}")
    return BLOCK.sub(lambda m: m[1] + (root / m["name"]).read_text() + m[4], readme)


def main() -> None:
    text = README.read_text()
    spliced = splice(text)
    if "--check" in sys.argv[1:]:
        if spliced != text:
            raise SystemExit("README.md tables differ from benchmarks/results/ (run make readme-tables)")
        return
    README.write_text(spliced)
    print(f"README.md: {len(BLOCK.findall(spliced))} table(s) from benchmarks/results/")


if __name__ == "__main__":
    main()
