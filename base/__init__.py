"""What every layer above the models shares: the run folder's definition (`base.run_folder`), the error
type that carries its exit status (`base.errors`) and the command-line machinery (`base.cli`).

Floors: `zoo` and `base` at the bottom, then `export`, then `training`. `base` imports no deep-learning
library: the package checker (`export.check`), which must run where only a consumer's libraries are, uses
it.
"""
