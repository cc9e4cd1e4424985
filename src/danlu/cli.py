"""The ``danlu`` command line (``danlu lab ...``; see ``danlu --help``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``danlu`` console script. Bad input exits with status 2 and a
    one-line error (no traceback)."""
    from danlu.lab.cli import add_lab_parser, run_command

    parser = argparse.ArgumentParser(prog="danlu", description="danlu: NLP training tricks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_lab_parser(sub)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except (ValueError, ImportError) as err:
        print(f"danlu: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("danlu: interrupted; finished cells are kept: rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
