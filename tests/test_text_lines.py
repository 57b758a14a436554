"""data/text_lines.read, the one reader of prompt and class-name files: stripped non-empty lines, and one-line
errors that name the file and what a line should hold."""

import pytest

from dream_jax.data import text_lines


def test_lines_are_stripped_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("  a red circle \n\n\t\nblue square\n")
    assert text_lines.read(str(path), "f", "prompt") == ["a red circle", "blue square"]


def test_missing_file_names_the_file_and_the_line_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^prompt file X does not exist; provide a text file with one "
                                                r"prompt per line$"):
        text_lines.read(str(tmp_path / "nope.txt"), "prompt file X", "prompt")


def test_a_file_without_lines_is_refused(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n   \n")
    with pytest.raises(ValueError, match=r"^class_names_file='E' has no class names \(one per line expected\)$"):
        text_lines.read(str(path), "class_names_file='E'", "class name")
