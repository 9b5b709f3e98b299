"""bioimage.io packaging of finished run folders (issue 4). Reads run folders only; never imports `training`.

Nothing is implemented here yet: the package exists so the project layout (zoo/, training/, export/) is
fixed from the start.
"""
