"""Copy the studies' tables (benchmarks/results/*.md) into the docs page that shows them, between markers.

    python benchmarks/readme_tables.py [--check]      (make readme-tables)

Each table sits in docs/results.md between ``<!-- begin: benchmarks/results/NAME.md -->`` and
``<!-- end: benchmarks/results/NAME.md -->``. ``--check`` changes nothing and exits 1 if the page differs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "docs" / "results.md"]  # the pages holding the tables (the README links to them)
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- begin: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def splice(page: str, root: Path = ROOT) -> str:
    """The page with every marked block replaced by the file it names; every results file must be marked."""
    named = {m["name"] for m in BLOCK.finditer(page)}
    unmarked = sorted(str(p.relative_to(root)) for p in (root / "benchmarks" / "results").glob("*.md")
                      if str(p.relative_to(root)) not in named)
    if unmarked:
        raise SystemExit(f"docs/results.md has no markers for {', '.join(unmarked)}")
    return BLOCK.sub(lambda m: m[1] + (root / m["name"]).read_text() + m[4], page)


def main() -> None:
    for page in PAGES:
        text = page.read_text()
        spliced = splice(text)
        name = page.relative_to(ROOT)
        if "--check" in sys.argv[1:]:
            if spliced != text:
                raise SystemExit(f"{name} tables differ from benchmarks/results/ (run make readme-tables)")
            continue
        page.write_text(spliced)
        print(f"{name}: {len(BLOCK.findall(spliced))} table(s) from benchmarks/results/")


if __name__ == "__main__":
    main()
