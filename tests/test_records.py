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
