"""The one check of a configured input file (weights, a vocabulary, a prompt file, a reference folder): set, and
there, before anything reads it, with an error that names the setting and what to provide."""

import os


def check_file(path, what, hint, folder_ok=False):
    """FileNotFoundError naming the setting `what` when `path` is empty or is no file (no file or folder where
    `folder_ok`); `hint` says what to provide."""
    if not path:
        raise FileNotFoundError(f"{what} is not set; provide {hint}")
    if not (os.path.isfile(path) or (folder_ok and os.path.isdir(path))):
        raise FileNotFoundError(f"{what}={path!r} does not exist; provide {hint}")
