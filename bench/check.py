#!/usr/bin/env python3
"""Compares a `bench/run` table with the targets recorded in BENCHMARKS.md.

    bench/check.py [--record] RESULTS.md BENCHMARKS.md

RESULTS.md is the table `bench/run` writes (bench/results.md): rows of
`| figure | Skiff | anchor | ratio | target |`. BENCHMARKS.md holds, under its `## Targets`
heading, a table of `| figure | column | label | target |`: a result row whose figure starts
with `figure` is checked by taking, in its `column` cell (`skiff`, `anchor` or `ratio`), the
first number after `label` (or the cell's first number when `label` is `-`), and comparing it
with `target` (`≥ X` or `≤ X`). A target of `—` names a figure that is reported (and recorded)
but has no goal: it is never below target, and its absence from a run is not a failure.

Prints one line per target (`ok`, `BELOW TARGET` or `missing` when the run had no such row or
no number there) and exits 1 when any target is not met, 0 otherwise.

With `--record`, also appends the checked figures to BENCHMARKS.md's `## History` table, with
the date and the commit (`git rev-parse --short HEAD`), so the file keeps the figures of each
commit that changed them.
"""

import datetime
import re
import subprocess
import sys

COLUMNS = {"skiff": 1, "anchor": 2, "ratio": 3}
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def table_rows(lines):
    """The cells of each markdown table row in `lines`, header and rule rows left out."""
    for line in lines:
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        yield [c.strip() for c in line.strip("|").split("|")]


def section(text, heading):
    """The lines under `## heading`, up to the next `## `."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == heading
            continue
        if inside:
            out.append(line)
    return out


def targets(benchmarks_md):
    rows = list(table_rows(section(benchmarks_md, "Targets")))
    if not rows:
        sys.exit("error: BENCHMARKS.md has no table under '## Targets'")
    out = []
    for cells in rows[1:]:
        if len(cells) != 4:
            sys.exit(f"error: a Targets row needs 4 cells (figure, column, label, target): {cells}")
        figure, column, label, target = cells
        label = None if label == "-" else label
        if column in COLUMNS and target == "—":
            out.append((figure, column, label, None, None))
            continue
        m = re.fullmatch(r"([≥≤])\s*(-?[0-9.]+)", target)
        if column not in COLUMNS or not m:
            sys.exit(f"error: bad Targets row {cells}: column is skiff|anchor|ratio, target is '≥ X', '≤ X' or '—'")
        out.append((figure, column, label, m.group(1), float(m.group(2))))
    return out


def value(result_rows, figure, column, label):
    for cells in result_rows:
        if len(cells) < 5 or not cells[0].startswith(figure):
            continue
        cell = cells[COLUMNS[column]]
        if label is not None:
            at = cell.find(label)
            if at < 0:
                return None
            cell = cell[at + len(label):]
        m = NUMBER.search(cell)
        return float(m.group(0)) if m else None
    return None


def main(argv):
    record = "--record" in argv
    args = [a for a in argv if a != "--record"]
    if len(args) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    results_path, bench_path = args
    with open(results_path, encoding="utf-8") as f:
        results = f.read()
    with open(bench_path, encoding="utf-8") as f:
        bench = f.read()
    rows = list(table_rows(results.splitlines()))
    failed = False
    checked = []
    for figure, column, label, op, target in targets(bench):
        v = value(rows, figure, column, label)
        name = f"{figure} [{column}{', ' + label if label else ''}]"
        if v is None:
            print(f"missing       {name}: no figure in this run")
            failed |= op is not None
            continue
        if op is None:
            checked.append(f"{figure}{' ' + label if label else ''} {v:g}")
            print(f"{'reported':<13} {name}: {v:g} (no target)")
            continue
        ok = v >= target if op == "≥" else v <= target
        failed |= not ok
        checked.append(f"{figure}{' ' + label if label else ''} {v:g}")
        print(f"{'ok' if ok else 'BELOW TARGET':<13} {name}: {v:g} (target {op} {target:g})")
    if record:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip() or "-"
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        line = f"| {day} | {commit} | {'; '.join(checked)} |\n"
        if "## History" not in bench:
            sys.exit("error: BENCHMARKS.md has no '## History' section to record into")
        lines = bench.splitlines(keepends=True)
        start = next(i for i, l in enumerate(lines) if l.strip() == "## History")
        end = start + 1
        while end < len(lines) and not lines[end].startswith("## "):
            end += 1
        # After the section's last table row.
        last = max((i for i in range(start, end) if lines[i].startswith("|")), default=None)
        if last is None:
            sys.exit("error: BENCHMARKS.md's '## History' section has no table")
        lines.insert(last + 1, line)
        with open(bench_path, "w", encoding="utf-8") as f:
            f.writelines(lines)
        print(f"recorded in {bench_path}: {line.strip()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
