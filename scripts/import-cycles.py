#!/usr/bin/env python3
"""Finds import cycles between the files of a Rust crate (default: host/src).

An edge A -> B means file A names an item of module file B through a `crate::`,
`super::` or `self::` path (in a `use` or inline). `mod x;` declarations are not
edges: a parent declaring its children is layout, not a dependency. A path is
resolved to the deepest module file it names, so `crate::plugins::Chain` is an edge
to plugins/mod.rs and `crate::plugins::chain::Chain` one to plugins/chain.rs.

Prints every strongly connected group of files and exits 1 if there is one.
Usage: scripts/import-cycles.py [SRC_DIR]
"""

import os
import re
import sys


def module_files(src):
    """Maps module path tuples (('plugins', 'chain')) to file paths."""
    files = {}
    for root, _dirs, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, name), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod",):
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            files.setdefault(tuple(parts), rel)
    return files


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def expand_use(tree):
    """Expands a use tree `a::{b, c::{d, e}}` into flat paths."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix = tree[:brace]
    inner = tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    out = []
    for part in parts:
        if part:
            out.extend(prefix + p for p in expand_use(part))
    return out


def current_module(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        return tuple(parts[:-1])
    if parts in (["lib"], ["main"]):
        return ()
    return tuple(parts)


def resolve(path, here, files):
    """The module file a path names, or None when it leaves the crate."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif tuple(list(here) + segs[:1]) in files:
        # A path relative to the current module (`use chain::Chain` in plugins/mod.rs).
        base = list(here)
    else:
        return None
    segs = [s.split(" as ")[0] for s in segs]
    best = None
    for n in range(len(segs) + 1):
        key = tuple(base + segs[:n])
        if key in files:
            best = files[key]
    return best


def edges(src):
    files = module_files(src)
    graph = {}
    for key, rel in files.items():
        text = strip_comments(open(os.path.join(src, rel), encoding="utf-8").read())
        # Test modules may use anything: a test is not a dependency of the code.
        cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests", text)
        if cut:
            text = text[: cut.start()]
        here = current_module(rel)
        targets = set()
        for m in re.finditer(r"\buse\s+([A-Za-z_][^;]*);", text):
            for path in expand_use(m.group(1)):
                target = resolve(path, here, files)
                if target:
                    targets.add(target)
        for m in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            target = resolve(m.group(1), here, files)
            if target:
                targets.add(target)
        targets.discard(rel)
        graph[rel] = targets
    return graph


def cycles(graph):
    """Tarjan's strongly connected components with more than one file."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "host", "src"
    )
    graph = edges(src)
    found = cycles(graph)
    for group in found:
        members = set(group)
        print("import cycle between:")
        for f in group:
            inner = sorted(t for t in graph[f] if t in members)
            print(f"  {f} -> {', '.join(inner)}")
    if found:
        sys.exit(1)
    print(f"no import cycles among {len(graph)} files")


if __name__ == "__main__":
    main()
