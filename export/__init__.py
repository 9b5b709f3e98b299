"""bioimage.io model packages from run folders: `python -m export RUN_DIR --out PACKAGE.zip`.

`export.package.export_run` builds, checks and atomically writes a package; `export.check` holds the
checks (`python -m export check PACKAGE.zip`). Export reads a run folder only and never imports the
training code.
"""
