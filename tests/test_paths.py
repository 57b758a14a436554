"""data.paths.check_file: the one check of a configured input file, with errors that name the setting."""

import pytest

from dream_jax.data import paths


def test_unset_missing_and_folder_paths_name_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^config.x.weights is not set; provide a .npz$"):
        paths.check_file("", "config.x.weights", "a .npz")
    missing = str(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match=r"config.x.weights='.*w.npz' does not exist; provide a .npz"):
        paths.check_file(missing, "config.x.weights", "a .npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a folder where a file is expected
        paths.check_file(str(tmp_path), "config.x.weights", "a .npz")


def test_existing_files_and_allowed_folders_pass(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"")
    paths.check_file(str(tmp_path / "w.npz"), "config.x.weights", "a .npz")
    paths.check_file(str(tmp_path), "config.x.reference", "a folder", folder_ok=True)
