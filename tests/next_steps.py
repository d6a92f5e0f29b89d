"""The "next:" lines commands print, run as printed: every line `next: mlx-opd ...` or
`or: mlx-opd ...` is a command; upper-case placeholders (HELDOUT.jsonl, AFTER.json, MODEL,
...) are filled in by the test, nothing else is changed."""

import re
import shlex

from click.testing import CliRunner

from mlx_opd.cli import main

NEXT = re.compile(r"^\s*(?:next|or):\s+mlx-opd\s+(.*)$")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]+(?:\.[a-z]+)?\b")


def next_commands(output: str, fill: dict | None = None) -> list[list[str]]:
    """The mlx-opd commands printed as next steps, placeholders filled from `fill`."""
    found = []
    for line in output.splitlines():
        m = NEXT.match(line)
        if not m:
            continue
        args = shlex.split(m.group(1))
        args = [str((fill or {}).get(a, a)) for a in args]
        left = [a for a in args if PLACEHOLDER.fullmatch(a)]
        assert not left, f"unfilled placeholders {left} in {line!r}"
        found.append(args)
    return found


def run_next(output: str, fill: dict | None = None, expect: int = 1) -> list:
    """Run every next step printed in `output` (at least `expect` of them); each must
    succeed. Returns the click results."""
    commands = next_commands(output, fill)
    assert len(commands) >= expect, f"expected {expect} next step(s) in:\n{output}"
    results = []
    for args in commands:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, (args, r.output, r.exception)
        results.append(r)
    return results
