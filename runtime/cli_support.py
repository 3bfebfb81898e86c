"""What every admpff command shares at its edges: help that shows each default, one exit code for
usage errors, and output paths checked before any work starts.

Standard library only, so the Jetson runtime (no torch) and the training CLIs can both import it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

#: Exit status of every admpff command for bad input or usage, matching argparse's own (2).
USAGE_ERROR = 2


class CommandError(Exception):
    """A problem the user can fix, reported as one line (``<prog>: error: <message>``) and exit 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after every option that has a default, and keeps descriptions as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        # Flags without a meaningful default (store_true, None, empty lists) show none.
        # Identity, not equality: a default of 0 (== False) is a real default and is shown.
        if (action.default is None or action.default is False or action.default == []
                or action.default is argparse.SUPPRESS or "default" in text):
            return text
        return super()._get_help_string(action)


def make_parser(prog: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` states every default."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter, **kwargs)


def prepare_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create (or accept) the output folder ``path`` *before* any work starts, or raise ``CommandError``.

    Catches the cases that used to surface as a traceback, or after minutes of work: the path is an
    existing file, its parent is a file, or the folder cannot be written.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise CommandError(f"{flag} {out} is an existing file; give a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"{flag} {out}: {parent} is a file, not a folder")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create {flag} folder {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CommandError(f"{flag} folder {out} is not writable")
    return out.resolve()


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check that ``path`` can be written as a file (its folder exists or can be made; it is no folder)."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise CommandError(f"{flag} {out} is a folder; give a file name")
    prepare_output_dir(out.parent if str(out.parent) else ".", flag=f"{flag} (its folder)")
    return out.resolve()
