"""`python -m training.segment`: train a U-Net to segment cells or nuclei (background / interior /
boundary, turned into one label per cell).

The task itself is `training.tasks.segment`; `--help` lists its options.
"""

import sys

from training.cli import task_main


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.segment`; returns the exit status."""
    return task_main("segment", argv)


if __name__ == "__main__":
    sys.exit(main())
