"""A batch that grows: the step bookkeeping (kakugo.steps) on a real local Ray cluster runs
a step only for the languages it has not done, and leaves the others' files and counts as
they were."""

from typing import ClassVar

import pytest

from kakugo.config import load_config
from kakugo.languages import resolve
from kakugo.steps import Stage
from kakugo.storage import Storage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class Rows(Stage):
    """A stage of one derived step: three rows per language."""

    root = "grow"
    steps = ("rows",)
    config_sections = ("seed",)
    built: ClassVar[list[list[str]]] = []

    def build_rows(self):
        import ray

        Rows.built.append(list(self.codes))
        return ray.data.from_items([{"language": code, "id": f"{code}-{i}", "category": "x"}
                                    for code in self.codes for i in range(3)])


def files(storage: Storage, folder: str) -> dict[str, tuple]:
    out = {}
    for name in storage.list(folder, recursive=True):
        info = storage.fs.get_file_info(storage.path(name))
        out[name] = (info.size, info.mtime_ns)
    return out


def test_a_step_runs_only_for_the_languages_added_to_the_batch(ray_cluster, tmp_path,
                                                                 data_dir):
    storage = Storage(str(tmp_path / "out"))
    config = load_config(None, [])
    gd, cy = resolve("gd", data_dir), resolve("cy", data_dir)
    Rows(config, [gd], storage).run()
    before = files(storage, "grow/rows/language=gla_Latn")
    first = storage.read_json("grow/rows/_manifest.json")["languages"]["gla_Latn"]

    Rows(config, [gd, cy], storage).run()  # the batch grows by one language
    assert Rows.built == [["gla_Latn"], ["cym_Latn"]]
    assert files(storage, "grow/rows/language=gla_Latn") == before  # untouched
    manifest = storage.read_json("grow/rows/_manifest.json")
    assert manifest["languages"]["gla_Latn"] == first  # its counts and seconds kept
    assert manifest["languages"]["cym_Latn"]["rows"] == 3

    Rows(config, [gd, cy], storage).run()  # nothing left to do
    assert Rows.built == [["gla_Latn"], ["cym_Latn"]]
    Rows(load_config(None, ["seed=1"]), [gd, cy], storage).run()  # another config: all
    assert Rows.built[-1] == ["gla_Latn", "cym_Latn"]



def test_a_stage_reads_only_its_own_languages_files(ray_cluster, tmp_path, data_dir):
    """Batches that share an output root share its step folders: a batch reads its own
    languages' folders and no other file, so another batch's file half written (here one
    that is not parquet at all) does not stop it."""
    storage = Storage(str(tmp_path / "out"))
    config = load_config(None, [])
    gd, cy = resolve("gd", data_dir), resolve("cy", data_dir)
    Rows(config, [gd, cy], storage).run()
    storage.write_bytes("grow/rows/language=cym_Latn/being-written.parquet", b"PAR1 cut")

    rows = Rows(config, [gd], storage).read("rows").take_all()
    assert sorted(r["id"] for r in rows) == ["gla_Latn-0", "gla_Latn-1", "gla_Latn-2"]


def test_a_read_for_no_languages_says_so(ray_cluster, tmp_path, data_dir):
    """A stage left with no language reads nothing: a clear error, not pyarrow's."""
    storage = Storage(str(tmp_path / "out"))
    config = load_config(None, [])
    Rows(config, [resolve("gd", data_dir)], storage).run()
    stage = Rows(config, [], storage)
    with pytest.raises(ValueError, match=r"grow/rows.*no languages"):
        stage.read("rows").take_all()
