"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the time goes.

    .venv/bin/python bench/profile_summary.py bench/results/<stamp>-gateway_cached_key-r1.txt
    .venv/bin/python bench/profile_summary.py A.txt --compare B.txt   # side by side, % of samples

Prints the share of samples spent in each function (inclusive: the function
or anything it called; self: the function itself) and per source file. Line
numbers are folded away so one function is one row.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        out.append((match["func"], match["file"]) if match else (part.strip(), "?"))
    return out


def load(path: Path) -> tuple[int, Counter, Counter, Counter, Counter]:
    total = 0
    inclusive: Counter = Counter()
    self_time: Counter = Counter()
    file_inclusive: Counter = Counter()
    file_self: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        fs = frames(stack)
        for name in {f"{func} ({file})" for func, file in fs}:
            inclusive[name] += n
        for file in {file for _, file in fs}:
            file_inclusive[file] += n
        func, file = fs[-1]
        self_time[f"{func} ({file})"] += n
        file_self[file] += n
    return total, inclusive, self_time, file_inclusive, file_self


def show(title: str, counter: Counter, total: int, top: int, other: tuple | None) -> None:
    print(f"\n{title}")
    for name, n in counter.most_common(top):
        line = f"  {100 * n / total:6.1f}%"
        if other is not None:
            o_total, o_counter = other
            line += f"  {100 * o_counter.get(name, 0) / o_total:6.1f}%"
        print(f"{line}  {name}")


def matches(path: Path, names: list[str]) -> tuple[int, dict[str, int]]:
    total = 0
    found = dict.fromkeys(names, 0)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        funcs = {func for func, _ in frames(stack)}
        for name in names:
            if name in funcs:
                found[name] += int(count)
    return total, found


def print_matches(path: Path, names: list[str], compare: Path | None) -> None:
    total, found = matches(path, names)
    other = matches(compare, names) if compare else None
    for name in names:
        line = f"  {100 * found[name] / total:6.1f}%"
        if other is not None:
            line += f"  {100 * other[1][name] / other[0]:6.1f}%"
        print(f"{line}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--compare", type=Path, help="a second profile, shown as a second column")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="FUNCTION",
        help="only print the share of samples whose stack holds FUNCTION "
        "(e.g. Pipeline.authenticate); repeatable",
    )
    args = parser.parse_args()
    if args.match:
        print_matches(args.profile, args.match, args.compare)
        return
    total, inc, self_, f_inc, f_self = load(args.profile)
    other = load(args.compare) if args.compare else None
    print(f"{args.profile}: {total} samples" + (f"; second column {args.compare}" if other else ""))
    pick = (lambda i: (other[0], other[i])) if other else (lambda i: None)
    show("inclusive, by function", inc, total, args.top, pick(1))
    show("self, by function", self_, total, args.top, pick(2))
    show("inclusive, by file", f_inc, total, args.top, pick(3))
    show("self, by file", f_self, total, args.top, pick(4))


if __name__ == "__main__":
    main()
