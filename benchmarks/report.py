"""Every published number, rendered from benchmarks/results/*.json (never typed by hand).

    python benchmarks/report.py            # rewrite the generated regions, docs/claim.md and the plots
    python benchmarks/report.py --check    # exit 1 if a committed page differs from what it would write

A generated region of README.md or docs/*.md is

    <!-- generated: NAME -->
    ...
    <!-- end: NAME -->

where NAME is a renderer in ``tables.RENDERERS``; the text between the markers is replaced, the prose around
them is left alone. ``docs/claim.md`` is generated whole. Plots (docs/img/*.png: accuracy against wall-clock
minutes, one panel per pair) are rewritten but never compared: PNG bytes vary with matplotlib's version.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from tables import RENDERERS, Results  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REGION = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- end: (?P=name) -->", re.S)
OPEN = re.compile(r"<!-- generated: ([\w-]+) -->")


def whole_files(res: Results) -> dict[Path, str]:
    """Pages generated whole, by path."""
    import claim
    return {ROOT / "docs" / "claim.md": claim.report(res["claim"], res["claim-val"])}


def render_page(path: Path, text: str, res: Results) -> str:
    """``text`` with every generated region refilled; an unknown name or an unclosed region is an error."""
    opened = OPEN.findall(text)
    closed = [m.group("name") for m in REGION.finditer(text)]
    if opened != closed:
        missing = next(n for n in opened if opened.count(n) != closed.count(n))
        raise SystemExit(f"{path}: region {missing!r} has no '<!-- end: {missing} -->'; close it")
    for name in opened:
        if name not in RENDERERS:
            raise SystemExit(f"{path}: unknown region {name!r}; the renderers are: {', '.join(sorted(RENDERERS))}")
    return REGION.sub(lambda m: f"<!-- generated: {m['name']} -->\n{RENDERERS[m['name']](res)}\n"
                                f"<!-- end: {m['name']} -->", text)


def pages(res: Results) -> dict[Path, str]:
    """What every generated page should hold, by path."""
    out = whole_files(res)
    for path in PAGES:
        if path not in out:
            out[path] = render_page(path, path.read_text(), res)
    return out


def plots(res: Results, folder: Path) -> list[Path]:
    """One PNG per pair: the rows before the protocol (curves on the test split, results/online.json) and the rows
    under it (results/claim.json: the final test accuracy of each row, the training loss along the run)."""
    import claim
    import online

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    old = res["online"]
    for prefix in sorted({"|".join(k.split("|")[:2]) for k, r in old["rows"].items() if r.get("curve")}):
        path = folder / f"online-{prefix.replace('|', '-')}.png"
        online.plot({"rows": {k: r for k, r in old["rows"].items() if k.startswith(prefix + "|")}}, path)
        written.append(path)
    test = res["claim"]
    for teacher, budget in sorted({tuple(k.split("|")[1:5:3]) for k in test["rows"]}):
        path = folder / f"claim-{teacher}-{budget}min.png"
        claim.plot(test, teacher, budget, path)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 naming each page that differs from what would be written")
    args = ap.parse_args(argv)
    res = Results()
    wanted = pages(res)
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)}: differs from its results files; run: python benchmarks/report.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    for p in plots(res, ROOT / "docs" / "img"):
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
