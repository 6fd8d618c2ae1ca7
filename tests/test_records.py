import json
import os

from stablenoise.records import write_json_atomic


def test_json_is_written_whole_with_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "run.json", {"a": [1, 2]})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": [1, 2]}
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    import pytest

    from stablenoise.records import atomic_write

    target = tmp_path / "state.npz"
    target.write_bytes(b"old")

    def killed_midway(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, killed_midway)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.npz"]
    # After a hard kill the one temporary file is replaced by the next write, not accumulated.
    (tmp_path / ".state.npz.partial.npz").write_bytes(b"stale")
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["state.npz"]


def test_json_is_strict(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == {
        "a": None, "b": [1.0, None], "c": {"d": None}}
