"""gm_skip_ros.io: atomic files and directories (modes, failures, concurrent writers)."""
import os
import stat

import pytest

from gm_skip_ros import io as gio


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda m: os.umask(m)
    os.umask(saved)


def _mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def _siblings(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name != name)


@pytest.mark.parametrize("mask,dir_mode,file_mode", [(0o022, 0o755, 0o644),
                                                     (0o027, 0o750, 0o640),
                                                     (0o002, 0o775, 0o664)])
def test_modes_honour_umask(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    assert gio.current_umask() == mask
    out = tmp_path / "export"
    with gio.atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert _mode(out) == dir_mode  # not mkdtemp's 0o700: readable by a ROS node's user
    assert _mode(out / "a.txt") == file_mode
    f = gio.atomic_write_bytes(tmp_path / "engine.bin", b"x")
    assert _mode(f) == file_mode  # not mkstemp's 0o600
    assert f.read_bytes() == b"x"
    # replacing an existing directory gives the new one the same mode
    with gio.atomic_directory(out) as tmp:
        (tmp / "b.txt").write_text("b")
    assert _mode(out) == dir_mode and sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_failure_in_block_keeps_previous_directory(tmp_path):
    out = tmp_path / "model"
    with gio.atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError, match="export failed"):
        with gio.atomic_directory(out) as tmp:
            (tmp / "weights").write_text("v2-partial")
            raise RuntimeError("export failed")
    assert (out / "weights").read_text() == "v1"
    assert _siblings(tmp_path, "model") == []  # no temporary or .old directories behind


def test_failed_final_rename_restores_previous_directory(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with gio.atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):  # the new directory into place
            raise OSError("disk went away")
        return real_replace(src, dst)

    monkeypatch.setattr(gio.os, "replace", replace)
    with pytest.raises(OSError, match="disk went away"):
        with gio.atomic_directory(out) as tmp:
            (tmp / "weights").write_text("v2")
    monkeypatch.setattr(gio.os, "replace", real_replace)
    assert (out / "weights").read_text() == "v1"
    assert _siblings(tmp_path, "model") == []


def test_old_directory_names_are_unique(tmp_path, monkeypatch):
    """Another writer's moved-aside directory is never deleted or reused."""
    out = tmp_path / "model"
    with gio.atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    foreign = tmp_path / ".model.old"  # the name the previous code always used
    foreign.mkdir()
    (foreign / "keep").write_text("other writer")
    olds = []
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".old"):
            olds.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(gio.os, "replace", replace)
    for v in ("v2", "v3"):
        with gio.atomic_directory(out) as tmp:
            (tmp / "weights").write_text(v)
    assert (out / "weights").read_text() == "v3"
    assert (foreign / "keep").read_text() == "other writer"
    assert len(olds) == 2 and len(set(olds)) == 2 and foreign not in [type(foreign)(o) for o in olds]
    assert _siblings(tmp_path, "model") == [".model.old"]


def test_overwrite_false_refuses_and_cleans_up(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    with pytest.raises(FileExistsError):
        with gio.atomic_directory(out, overwrite=False) as tmp:
            (tmp / "x").write_text("x")
    assert list(out.iterdir()) == [] and _siblings(tmp_path, "model") == []
