#!/usr/bin/env python3
"""Checks the agent crate's module graph: every top-level module of agent/src has a `//!`
header, and no two top-level modules import each other, directly or around a cycle
(data flows one way). Prints the graph with --print. Run by .ci/run."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "agent", "src")
SKIP = {"lib.rs", "main.rs", "cli"}  # the crate root and the binary's edge


def modules():
    for name in sorted(os.listdir(ROOT)):
        if name in SKIP:
            continue
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            yield name, path, os.path.join(path, "mod.rs")
        elif name.endswith(".rs"):
            yield name[:-3], path, path


def sources(path):
    if os.path.isfile(path):
        yield path
        return
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(".rs"):
                yield os.path.join(root, f)


def strip_tests(text):
    # Test modules may reach anywhere (fixtures); only the code's own imports count.
    out, depth, skipping = [], 0, False
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not skipping and re.match(r"\s*#\[cfg\(test\)\]", line):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if re.match(r"\s*mod \w+;", nxt):
                i += 2
                continue
            skipping, depth, started = True, 0, False
            i += 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                started = started or "{" in lines[i]
                i += 1
                if started and depth <= 0:
                    break
            skipping = False
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def main():
    names = {m for m, _, _ in modules()}
    graph, problems = {}, []
    for name, path, head in modules():
        first = open(head, encoding="utf-8").read().lstrip()
        if not first.startswith("//!"):
            problems.append(f"{head}: no //! header saying what the module owns")
        deps = set()
        for f in sources(path):
            if f.endswith("tests.rs"):
                continue
            text = strip_tests(open(f, encoding="utf-8").read())
            for m in re.findall(r"crate::(\w+)", text):
                if m in names and m != name:
                    deps.add(m)
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                for m in re.findall(r"\b(\w+)\b", group):
                    if m in names and m != name:
                        deps.add(m)
        graph[name] = deps
    if "--print" in sys.argv:
        for n in sorted(graph):
            print(f"{n}: {' '.join(sorted(graph[n])) or '-'}")
    # Cycles, by depth-first search.
    state = {}

    def visit(n, stack):
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cyc = stack[stack.index(d):] + [d]
                problems.append("import cycle: " + " -> ".join(cyc))
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
