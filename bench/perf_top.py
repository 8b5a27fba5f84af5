#!/usr/bin/env python3
"""Reads `perf script` output (call-graph samples) on stdin and prints the functions with the
most samples: by self time (the sample's leaf) and by inclusive time (anywhere on the stack,
counted once per sample), as percentages of all samples. Used by bench/profile.sh."""
import re
import sys
from collections import Counter


def clean(frame):
    # "    7f12 func_name+0x1f (/path/binary)" -> "func_name"
    parts = frame.strip().split(None, 1)
    if len(parts) < 2:
        return None
    name = parts[1].rsplit(" (", 1)[0]
    name = re.sub(r"\+0x[0-9a-f]+$", "", name)
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name


def samples(lines):
    stack = []
    for line in lines:
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line[0] in " \t":
            name = clean(line)
            if name:
                stack.append(name)
    if stack:
        yield stack


# Frames on nearly every stack (thread start, the runtime's task polling) say nothing.
PLUMBING = re.compile(
    r"^(<?std::|<?core::(ops|panic)|<alloc::boxed::Box<dyn|<?tokio::(runtime|loom)|"
    r"start_thread|clone3|__GI___clone3)"
)


def main():
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    own, incl, total = Counter(), Counter(), 0
    for stack in samples(sys.stdin):
        total += 1
        own[stack[0]] += 1
        for name in set(stack):
            incl[name] += 1
    if total == 0:
        sys.exit("no samples")
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive (runtime plumbing left out)", incl)):
        print(f"-- {title}")
        shown = 0
        for name, n in counter.most_common():
            if title != "self" and PLUMBING.match(name):
                continue
            print(f"{100 * n / total:6.1f}%  {name[:150]}")
            shown += 1
            if shown == top:
                break


if __name__ == "__main__":
    main()
