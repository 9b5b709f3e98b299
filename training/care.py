"""`python -m training.care`: train CARE, supervised restoration, on pairs of low- and high-quality images.

The task itself is `training.tasks.care`; `--help` lists its options.
"""

import sys

from training.cli import task_main


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.care`; returns the exit status."""
    return task_main("care", argv)


if __name__ == "__main__":
    sys.exit(main())
