"""`python -m training.denoise`: train a Noise2Void denoiser (N2V, N2V2, structN2V) on noisy images alone.

The task itself is `training.tasks.denoise`; `--help` lists its options.
"""

import sys

from training.cli import task_main


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.denoise`; returns the exit status."""
    return task_main("denoise", argv)


if __name__ == "__main__":
    sys.exit(main())
