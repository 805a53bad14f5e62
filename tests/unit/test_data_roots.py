"""Data roots: which paths a server may read, after symlinks, and what its refusals say."""

from __future__ import annotations

import os

import pytest

from kdmkb.services.data_roots import DataRoots
from kdmkb.services.errors import ConfigError, DataError


@pytest.fixture
def tree(tmp_path):
    """root/kb (a folder), root/link-out -> outside, root/link-in -> root/kb, outside/secret.tsv."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "kb").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.tsv").write_text("Name:\tsecret\n")
    os.symlink(outside, root / "link-out")
    os.symlink(root / "kb", root / "link-in")
    return root, outside


def test_relative_paths_resolve_against_the_first_root_not_the_working_directory(tree, tmp_path, monkeypatch):
    root, _ = tree
    monkeypatch.chdir(tmp_path)
    roots = DataRoots([root, tmp_path / "elsewhere"])
    assert roots.resolve("kb", "data_dir") == root.resolve() / "kb"
    assert roots.resolve("link-in", "data_dir") == root.resolve() / "kb"


@pytest.mark.parametrize("given", ["../outside", "link-out", "link-out/secret.tsv", "/proc/self/status", "kb/../../outside"])
def test_a_path_leaving_every_root_is_refused_naming_the_field_and_only_what_was_given(tree, given):
    root, outside = tree
    with pytest.raises(ConfigError) as raised:
        DataRoots([root]).resolve(given, "entities_path")
    message = str(raised.value)
    assert message.startswith(f"entities_path: {given!r} is not inside a data root")
    assert str(outside) not in message and "secret" not in message.replace(given, "")


def test_without_roots_any_path_resolves_against_the_working_directory(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DataRoots(None).resolve("outside", "data_dir") == (tmp_path / "outside").resolve()
    DataRoots(None).check_folder(tmp_path / "root")


def test_a_kb_folder_with_a_symlink_out_of_the_roots_is_refused_at_any_depth(tree):
    root, outside = tree
    roots = DataRoots([root])
    roots.check_folder(root / "kb")
    os.symlink(outside / "secret.tsv", root / "kb" / "train.tsv")
    with pytest.raises(DataError, match="train.tsv: a symbolic link that leads out of the data roots"):
        roots.check_folder(root / "kb")
    os.remove(root / "kb" / "train.tsv")
    (root / "kb" / "features").mkdir()
    os.symlink(outside, root / "kb" / "features" / "deep")
    with pytest.raises(DataError, match="deep: a symbolic link"):
        roots.check_folder(root / "kb")


def test_symlinks_inside_the_roots_and_loops_are_fine(tree):
    root, _ = tree
    os.symlink(root / "kb", root / "kb" / "loop")
    DataRoots([root]).check_folder(root / "link-in")


def test_a_folder_outside_the_roots_is_refused_on_the_node_that_reads_it(tree):
    root, _ = tree
    with pytest.raises(DataError, match="not inside a data root"):
        DataRoots([root]).check_folder(root / "link-out")


def test_no_roots_at_all_is_an_error():
    with pytest.raises(ConfigError, match="at least one directory"):
        DataRoots([])
