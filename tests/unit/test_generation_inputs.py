"""A language whose own generation inputs cannot be read is left out of the batch, with
the reason; the other languages go on (no engine is needed to see it)."""

from kakugo import layout
from kakugo.config import load_config
from kakugo.generate.pipeline import GenerationStage, generate
from kakugo.languages import resolve
from kakugo.storage import Storage


def test_a_language_without_context_texts_is_left_out_of_generation(tmp_path, data_dir):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "gla_Latn.txt").write_text("Tha i fuar.\n\nTha an t-uisge ann.\n")
    config = load_config("configs/tiny-cpu.yaml", [
        f"generation.contexts.source={texts}/{{flores_code}}.txt", f"output={tmp_path / 'out'}"])
    gd, cy = resolve("gd", data_dir), resolve("cy", data_dir)
    storage = Storage(str(tmp_path / "out"))
    stage = GenerationStage(config, [gd, cy], storage)
    failed = stage.read_inputs()
    assert set(failed) == {"cym_Latn"}
    assert failed["cym_Latn"].startswith("context texts (") and "does not exist" in \
        failed["cym_Latn"]
    assert stage.codes == ["gla_Latn"]
    # read once, one language at a time, into the output root: the seeds step reads them
    assert storage.read_parquet(layout.context_texts("gla_Latn")).column("text").to_pylist() \
        == ["Tha i fuar.", "Tha an t-uisge ann."]
    # when no language is left, the stage says why for each and starts no engine
    assert generate(config, [cy], storage) == {"failed": failed}
    assert not any(storage.list(layout.step_folder(layout.GENERATE, step))
                   for step in layout.GENERATE_STEPS)
