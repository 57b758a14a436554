"""Lists kept in text files, one item a line (prompt files, class-name files): the one reader, whose errors say
which file and what each line should hold."""

import os


def read(path, label, item):
    """The stripped, non-empty lines of the file at `path`. `label` names it in errors (e.g. "prompt file P"),
    `item` is what a line holds (e.g. "prompt"). Missing: FileNotFoundError; no such line: ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{label} does not exist; provide a text file with one {item} per line")
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{label} has no {item}s (one per line expected)")
    return lines
