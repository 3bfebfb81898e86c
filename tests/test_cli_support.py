"""The shared CLI edge: output paths are checked before work starts, and help shows defaults."""
import os

import pytest

from admpff.runtime.cli_support import CommandError, check_output_file, make_parser, prepare_output_dir


def test_output_dir_created_and_resolved(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and out.is_absolute()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "taken"
    f.write_text("user data")
    with pytest.raises(CommandError, match="existing file"):
        prepare_output_dir(f)
    assert f.read_text() == "user data"  # nothing lost


def test_output_dir_under_a_file_is_refused(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(CommandError, match="is a file"):
        prepare_output_dir(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_dir_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CommandError, match="not writable"):
            prepare_output_dir(ro)
    finally:
        ro.chmod(0o700)


def test_output_file_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(CommandError, match="is a folder"):
        check_output_file(tmp_path, "--json")
    assert check_output_file(tmp_path / "new" / "x.json", "--json").parent.is_dir()


def test_help_shows_defaults_once():
    ap = make_parser("admpff-x")
    ap.add_argument("--batch", type=int, default=8, help="batch size")
    ap.add_argument("--iters", type=int, default=5, help="iterations (default 5)")
    ap.add_argument("--flag", action="store_true", help="a switch")
    text = ap.format_help()
    assert "batch size (default: 8)" in text
    assert text.count("default") == 2  # the explicit one is not repeated; the switch shows none
