"""slmops.files: JSON written whole or not at all."""

import json

import pytest

from slmops.files import write_json


def test_json_is_written_whole_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "deep" / "figures.json"
    write_json(path, {"cpu": "Zen 5 class", "tokens/s": 80.2, "name": "modèle"})
    assert json.loads(path.read_text(encoding="utf-8"))["name"] == "modèle"
    with pytest.raises(TypeError):
        write_json(path, {"where": tmp_path})  # a path is no JSON without a default
    assert json.loads(path.read_text(encoding="utf-8"))["tokens/s"] == 80.2
    write_json(path, {"where": tmp_path}, default=str)
    assert json.loads(path.read_text(encoding="utf-8")) == {"where": str(tmp_path)}
    assert [item.name for item in path.parent.iterdir()] == ["figures.json"]  # no temporary file left
