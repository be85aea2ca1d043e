"""The help of every command, through the real executable at 80 columns: nothing wider
than the terminal, every command listed with a one-line summary, options in their panels,
and no type noise where a metavar says more."""

from __future__ import annotations

import asyncio
import re

from rich.cells import cell_len

from .helpers import run_cli

WIDTH = 80

# The option panels each command's help shows.
PANELS = {
    "call": ("Connection", "Security", "Limits", "Output"),
    "list": ("Connection", "Security", "Limits"),
    "describe": ("Connection", "Security", "Limits"),
    "serve": ("Listening", "Security", "Limits", "Keepalive", "Output"),
    "expose": ("Connection", "Exposing", "Security", "Limits", "Keepalive", "Output"),
    "demo": ("Options",),
    "demo-backend": ("Listening",),
}
COMMANDS = tuple(PANELS)
NOISE = ("<bool>", "<list[", "<float", "<int", "<path>", " TEXT ", "INTEGER", "FLOAT")


_helps_seen: dict[str, str] = {}


async def _helps() -> dict[str, str]:
    """Each command's help (the top level's under ""), at 80 columns; asked once."""
    if not _helps_seen:
        _helps_seen.update(await _ask_helps())
    return _helps_seen


async def _ask_helps() -> dict[str, str]:
    names = ("", *COMMANDS)
    results = await asyncio.gather(
        *(
            run_cli(*([name] if name else []), "--help", env={"COLUMNS": str(WIDTH)})
            for name in names
        )
    )
    for name, result in zip(names, results, strict=True):
        assert result.returncode == 0, (name, result)
        assert result.stderr == "", (name, result.stderr)
    return {name: result.stdout for name, result in zip(names, results, strict=True)}


async def test_every_help_fits_80_columns_in_panels() -> None:
    helps = await _helps()
    for name, text in helps.items():
        wide = [line for line in text.splitlines() if cell_len(line) > WIDTH]
        assert wide == [], (name, wide)
        for noise in NOISE:
            assert noise not in text, (name, noise, text)
    for name, panels in PANELS.items():
        for panel in panels:
            assert f"╭─ {panel} ─" in helps[name], (name, panel, helps[name])
    # each command says what -v shows in it
    verbose = {name: _option_help(helps[name], "--verbose") for name in ("call", "serve", "expose")}
    assert len(set(verbose.values())) == len(verbose), verbose


def _option_help(text: str, option: str) -> str:
    """The words of an option's help, from its row to the next option or panel end."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if f"│ {option} " in line)
    words = lines[start].strip("│ ").split()[1:]
    for line in lines[start + 1 :]:
        inner = line.strip("│ ")
        if line.startswith("╰") or inner.startswith("-"):
            break
        words += inner.split()
    return " ".join(words)


async def test_top_level_help_lists_every_command_with_a_one_line_summary() -> None:
    lines = (await _helps())[""].splitlines()
    row = re.compile(r"^│ ([a-z-]+)\s{2,}(\S.*?)\s*│$")
    for command in COMMANDS:
        index = next(
            (i for i, line in enumerate(lines) if (m := row.match(line)) and m[1] == command),
            None,
        )
        assert index is not None, (command, lines)
        following = lines[index + 1]
        # the next line is another command or the end of the panel: no wrapped summary
        assert row.match(following) or following.startswith("╰"), (command, following)
    assert any(line.startswith("╭─ Tunnels ") for line in lines), lines
