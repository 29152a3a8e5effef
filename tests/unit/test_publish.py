"""`kakugo push`: planning, card checks and the upload calls. The Hub cannot be reached
from tests, so the real-upload test hands `push` a recording stand-in for
`huggingface_hub.HfApi` (same method names and arguments) and checks what it was asked to
create and upload, file by file. The cards are the ones our stages write (dataset_card,
model_card); the e2e test also dry-runs the CLI on a real run's output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from kakugo.cli import main
from kakugo.config import load_config
from kakugo.dataset.card import dataset_card
from kakugo.languages import resolve
from kakugo.publish import PublishError, card_header, plan, push
from kakugo.storage import Storage
from kakugo.train.export import model_card

TINY = "configs/tiny-cpu.yaml"


def write_outputs(root: Path, config, lang) -> None:
    """A language's dataset and model folders as the dataset stage and training write them."""
    data = root / lang.flores_code / "dataset"
    (data / "data").mkdir(parents=True)
    (data / "rejects").mkdir()
    messages = [[{"role": "user", "content": "Ciamar a tha thu?"},
                 {"role": "assistant", "content": "Tha gu math."}]]
    pq.write_table(pa.table({"messages": messages}), data / "data" / "part-0.parquet")
    pq.write_table(pa.table({"reject": ["basic/unfinished"]}), data / "rejects" / "r.parquet")
    stats = {"rows": 1, "categories": {"topic": 1}, "candidates": 2,
             "rejects": {"basic/unfinished": 1}, "language_id": {"ok": 1},
             "generation_tokens": 10, "engine_seconds": 1.0, "accelerator": "CPU",
             "filters": {"basic": {"action": "drop", "dropped": 1, "annotated": 0}},
             "decontaminated_against": {"flores200": "local"}, "rows_with_trace": 1,
             "token_budget": None, "budget_tokens_used": None}
    (data / "README.md").write_text(dataset_card(lang, config, stats))
    (data / "dataset_info.json").write_text(json.dumps({"kakugo_gd": {"file_name": "data"}}))
    model = root / lang.flores_code / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    (model / "_COMPLETE").write_text("4 files\n")  # what an export writes last
    training = config.training.model_dump(mode="json")
    (model / "README.md").write_text(model_card({
        "language": {"tag": lang.tag, "name": lang.name}, "training": training,
        "student_model": config.student.model, "model_name": "kakugo-gla",
        "dataset_repo": "kakugo-gla", "train_rows": 1, "total_steps": 1}))


@pytest.fixture
def outputs(tmp_path, data_dir):
    config = load_config(TINY, [f"output={tmp_path}", "publish.namespace=kakugo-test",
                                'languages=["gd"]'])
    lang = resolve("gd", data_dir)
    write_outputs(tmp_path, config, lang)
    return config, lang, Storage(str(tmp_path))


def test_the_plan_uses_the_paper_names_and_leaves_out_the_rejects(outputs):
    config, lang, storage = outputs
    dataset, model = plan(config, [lang], storage)
    assert (dataset.repo_id, dataset.kind) == ("kakugo-test/kakugo-gla", "dataset")
    assert dataset.files == ["README.md", "data/part-0.parquet", "dataset_info.json"]
    assert (model.repo_id, model.kind) == ("kakugo-test/kakugo-3B-gla", "model")
    assert model.files == ["README.md", "config.json", "model.safetensors"]
    # the model card points at the dataset repo it is published with
    assert card_header(model.card, "model")["datasets"] == ["kakugo-test/kakugo-gla"]
    assert model.card.split("---", 2)[2] == (storage.read_text(
        "gla_Latn/model/README.md").split("---", 2)[2])  # the body is unchanged


def test_push_creates_each_repo_and_uploads_exactly_the_planned_files(outputs):
    config, lang, storage = outputs

    class RecordingHubApi:
        """huggingface_hub's HfApi as push calls it; each commit's operations are real
        CommitOperationAdd objects (their contents read as the Hub client reads them)."""

        def __init__(self):
            self.calls = []

        def create_repo(self, repo_id, *, repo_type, private, exist_ok):
            self.calls.append(("create", repo_id, repo_type, private, exist_ok))

        def create_commit(self, *, repo_id, repo_type, operations, commit_message):
            contents = {}
            for op in operations:
                with op.as_file() as f:
                    contents[op.path_in_repo] = f.read()
            files = sorted(contents)
            card = contents["README.md"].decode()
            self.calls.append(("upload", repo_id, repo_type, files, card, commit_message))
            self.contents = getattr(self, "contents", {}) | {repo_id: contents}

    api = RecordingHubApi()
    done = push(config, [lang], storage, api=api)
    assert [d["uploaded"] for d in done] == [True, True]
    create_dataset, upload_dataset, create_model, upload_model = api.calls
    assert create_dataset == ("create", "kakugo-test/kakugo-gla", "dataset", False, True)
    assert upload_dataset[1:4] == ("kakugo-test/kakugo-gla", "dataset",
                                   ["README.md", "data/part-0.parquet", "dataset_info.json"])
    assert create_model == ("create", "kakugo-test/kakugo-3B-gla", "model", False, True)
    assert upload_model[3] == ["README.md", "config.json", "model.safetensors"]
    header = yaml.safe_load(upload_model[4].split("---")[1])
    assert header["datasets"] == ["kakugo-test/kakugo-gla"] and header["language"] == ["gd"]
    assert "gla_Latn model" in upload_model[5]
    # the weights went up as they are in the output root, not a copy of a copy
    assert api.contents["kakugo-test/kakugo-3B-gla"]["model.safetensors"] == b"weights"


def test_dry_run_cli_lists_the_uploads_and_sends_nothing(outputs, capsys, monkeypatch):
    _config, _lang, storage = outputs
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token
    code = main(["push", "--config", TINY, "--languages", "gd", "--output", storage.root,
                 "--set", "publish.namespace=kakugo-test", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "would push gla_Latn dataset -> kakugo-test/kakugo-gla (3 files" in out
    assert "would push gla_Latn model -> kakugo-test/kakugo-3B-gla (3 files" in out
    assert "nothing was sent" in out


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "gla_Latn/dataset/README.md").write_text("# no header\n"),
     "dataset/README.md: no YAML header"),
    (lambda root: (root / "gla_Latn/dataset/README.md").write_text("---\nlanguage: [gd\n---\n"),
     "the YAML header does not parse"),
    (lambda root: (root / "gla_Latn/model/README.md").write_text(
        "---\nlanguage: [gd]\nlicense: apache-2.0\n---\n# card\n"),
     "the model card lacks library_name, pipeline_tag"),
    (lambda root: (root / "gla_Latn/dataset/README.md").write_text(
        (root / "gla_Latn/dataset/README.md").read_text().replace("- gd\n", "- cy\n", 1)),
     "the card's language is ['cy'], not ['gd']"),
    (lambda root: (root / "gla_Latn/model/model.safetensors").unlink(),
     "no safetensors weights under"),
    (lambda root: (root / "gla_Latn/model/_COMPLETE").unlink(),
     "was not exported whole"),
    (lambda root: [p.unlink() for p in (root / "gla_Latn/dataset").rglob("*") if p.is_file()],
     "no dataset at"),
])
def test_a_bad_card_or_a_missing_part_is_refused_before_anything_is_sent(
        outputs, tmp_path, damage, message, capsys):
    config, lang, storage = outputs
    damage(tmp_path)
    with pytest.raises(PublishError, match="gla_Latn|Gaelic"):
        plan(config, [lang], storage)
    code = main(["push", "--config", TINY, "--languages", "gd", "--output", storage.root,
                 "--dry-run"])
    assert code == 2 and message in capsys.readouterr().err


def test_a_real_push_without_a_token_says_how_to_get_one(outputs, monkeypatch, tmp_path):
    config, lang, storage = outputs
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # no login cache either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN"):
        push(config, [lang], storage)


def test_repo_name_templates_are_checked_at_config_load():
    from kakugo.config import ConfigError

    with pytest.raises(ConfigError, match=r"publish.model_repo.*unknown or malformed "
                                          r"placeholder \('iso'\)"):
        load_config(TINY, ["publish.model_repo=kakugo-3B-{iso}"])
    with pytest.raises(ConfigError, match="not a hub repo name"):
        load_config(TINY, ["publish.dataset_repo=kakugo {name}"])


def test_the_pushed_cards_carry_the_hubs_fields_and_the_scores(outputs):
    """Cards built with huggingface_hub's card data: the dataset's sources and machine
    annotation, the model's licence from publish.model_license, its scores as model-index,
    and base_model only for a hub student (the tiny embedded one has none)."""
    from huggingface_hub import DatasetCard, ModelCard

    config, lang, storage = outputs
    storage.write_json("eval/gla_Latn/kakugo-gla/sib200.json", {
        "model": "kakugo-gla", "kind": "sib200", "results": {"acc,none": 0.4}})
    storage.write_json("eval/gla_Latn/kakugo-gla/flores_en_xx.json", {
        "model": "kakugo-gla", "kind": "flores_en_xx", "results": {"chrf,none": 6.67}})
    storage.write_json("eval/gla_Latn/tiny-granite/sib200.json", {  # the base: not its card
        "model": "tiny-granite", "kind": "sib200", "results": {"acc,none": 0.3}})
    dataset, model = plan(config, [lang], storage)
    data = DatasetCard(dataset.card).data
    assert data.annotations_creators == ["machine-generated"]
    assert not data.source_datasets  # tiny-cpu reads local texts and embedded instructions
    from kakugo.dataset.card import source_datasets

    assert source_datasets(load_config(None, [])) == ["HuggingFaceFW/fineweb-2",
                                                      "BAAI/Infinity-Instruct"]
    card = ModelCard(model.card).data
    assert card.license == "apache-2.0" and card.base_model is None
    scores = {(r.dataset_type, r.metric_type): r.metric_value for r in card.eval_results}
    assert scores == {("Davlan/sib200", "acc"): 0.4,
                      ("openlanguagedata/flores_plus", "chrf"): 6.67}
    assert model.header["model-index"][0]["name"] == "kakugo-test/kakugo-3B-gla"


def test_a_hub_student_is_the_cards_base_model():
    from huggingface_hub import ModelCard

    from kakugo.train.export import model_card

    cfg = {"language": {"tag": "gd", "name": "Scottish Gaelic"},
           "training": load_config(TINY, []).training.model_dump(mode="json"),
           "model_name": "kakugo-gla", "dataset_repo": "kakugo-gla", "train_rows": 1,
           "total_steps": 1}
    hub = ModelCard(model_card({**cfg, "student_model": "ibm-granite/granite-4.0-micro"}))
    assert hub.data.base_model == "ibm-granite/granite-4.0-micro"
    embedded = ModelCard(model_card({**cfg, "student_model": "embedded:tiny-granite"}))
    assert embedded.data.base_model is None


def test_an_s3_output_root_is_pushed_from_streams(s3_bucket, tmp_path, data_dir):
    """From an s3:// root the files go to the Hub client as seekable streams that it can
    hash and read again (what CommitOperationAdd asks for), not as local copies."""
    from huggingface_hub import CommitOperationAdd

    storage = Storage(s3_bucket + "/runs/a")
    storage.write_bytes("gla_Latn/model/model.safetensors", b"w" * 100_000)
    with storage.open_reader("gla_Latn/model/model.safetensors") as reader:
        op = CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=reader)
        assert op.upload_info.size == 100_000
        with op.as_file() as f:
            assert f.read() == b"w" * 100_000
