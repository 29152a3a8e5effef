import os

import pyarrow as pa
import pytest

from kakugo.storage import Storage, StorageError


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "out"))
    return Storage(request.getfixturevalue("s3_bucket") + "/runs/a")


def test_json_roundtrip_and_listing(storage):
    storage.check_writable()
    storage.write_json("gla_Latn/topics/_manifest.json", {"rows_out": 3, "name": "Gàidhlig"})
    assert storage.read_json("gla_Latn/topics/_manifest.json") == {"rows_out": 3,
                                                                  "name": "Gàidhlig"}
    assert storage.exists("gla_Latn/topics/_manifest.json")
    assert not storage.exists("gla_Latn/topics/other.json")
    assert storage.read_json("nope.json", default=None) is None
    assert storage.list("gla_Latn", recursive=True) == ["gla_Latn/topics/_manifest.json"]
    assert storage.list("missing") == []
    storage.delete("gla_Latn/topics/_manifest.json")
    assert not storage.exists("gla_Latn/topics/_manifest.json")


def test_parquet_roundtrip(storage):
    table = pa.table({"id": ["a", "b"], "tokens": [1, 2]})
    storage.write_parquet("x/part-0.parquet", table)
    assert storage.read_parquet("x/part-0.parquet").equals(table)


def test_overwrite_is_whole_and_leaves_no_temp_files(storage):
    storage.write_json("m.json", {"v": 1})
    storage.write_json("m.json", {"v": 2})
    assert storage.read_json("m.json") == {"v": 2}
    assert storage.list("") == ["m.json"]


def test_missing_file_error_names_the_uri(storage):
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_json("absent.json")


def test_dir_upload_and_download(storage, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    storage.upload_dir(src, "models/m")
    dst = tmp_path / "copy"
    storage.download_dir("models/m", dst)
    assert (dst / "config.json").read_text() == "{}"
    assert (dst / "sub" / "w.bin").read_bytes() == b"\x00\x01"


def test_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(StorageError, match="S3 bucket 'no-such-bucket' does not exist"):
        Storage("s3://no-such-bucket/runs").check_writable()


def test_unwritable_local_root(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")  # a file where a folder should be: not writable even for root
        root = blocker / "out"
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
    with pytest.raises(StorageError, match="is not writable"):
        Storage(str(root)).check_writable()


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="only local paths and s3://"):
        Storage("gs://bucket/x")


def test_an_s3_outage_is_a_clear_error_and_loses_nothing(s3_server, monkeypatch):
    """The S3 endpoint goes away mid-run: the write fails with an error naming the object;
    back up on the same address, what was written before is intact and writing goes on."""
    import boto3

    from tests.conftest import S3Endpoint, free_port

    endpoint = S3Endpoint(free_port())
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint["AWS_ENDPOINT_URL"])
    endpoint.start()
    try:
        boto3.client("s3", endpoint_url=endpoint["AWS_ENDPOINT_URL"]).create_bucket(
            Bucket="kakugo-outage")
        storage = Storage("s3://kakugo-outage/run")
        storage.write_json("generate/seeds/_manifest.json", {"rows": 3})
        endpoint.stop()
        with pytest.raises(StorageError, match="s3://kakugo-outage/run/generate/expand"):
            storage.write_json("generate/expand/_manifest.json", {"rows": 5})
        endpoint.start()
        assert storage.read_json("generate/seeds/_manifest.json") == {"rows": 3}
        storage.write_json("generate/expand/_manifest.json", {"rows": 5})
        assert storage.read_json("generate/expand/_manifest.json") == {"rows": 5}

        # a step that fails in its own words (as Ray Data's readers do) while the storage
        # is down fails as a StorageError that says so; its finished steps are kept
        from kakugo.config import load_config
        from kakugo.steps import Stage

        class TwoSteps(Stage):
            root, steps, config_sections = "demo", ("first", "second"), ("seed",)

            def build_first(self):
                return {}

            def build_second(self):
                endpoint.stop()
                raise OSError("read failed: connection refused")

        with pytest.raises(StorageError, match=r"demo/second: the output root "
                           r"s3://kakugo-outage/run is unreachable .*rerun once the storage "
                           r"is back to resume here"):
            TwoSteps(load_config(None), [], storage).run()
        endpoint.start()
        assert storage.exists("demo/first/_manifest.json")
        assert not storage.exists("demo/second/_manifest.json")
    finally:
        endpoint.stop()


def test_a_key_that_leads_outside_the_target_folder_is_refused(s3_bucket, s3_server,
                                                               tmp_path):
    """An S3 key with `..` segments (S3 keeps them as written) must not write outside the
    folder a model is downloaded to; nothing is written at all."""
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=bucket, Key="models/m/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="models/m/../../../escaped.txt", Body=b"x")
    target = tmp_path / "deep" / "cache" / "m"
    with pytest.raises(StorageError, match=r"escaped.txt: the key leads outside .*nothing "
                                           r"copied"):
        Storage(s3_bucket).download_dir("models/m", target)
    assert not list(tmp_path.rglob("escaped.txt")) and not target.exists()


class CutAfter:
    """The storage's file system, whose `method` fails (the endpoint gone) after `n` calls."""

    def __init__(self, fs, method: str, n: int):
        self.fs, self.method, self.n, self.calls = fs, method, n, 0

    def __getattr__(self, name):
        real = getattr(self.fs, name)
        if name != self.method:
            return real

        def cut(*args, **kwargs):
            self.calls += 1
            if self.calls > self.n:
                raise OSError("connection refused")
            return real(*args, **kwargs)
        return cut


def test_a_copy_cut_half_way_is_never_taken_for_a_whole_one(s3_bucket, tmp_path):
    """The S3 endpoint goes away after the first file of a model's upload: the folder has
    no completion marker, so readers (the model cache, "has a tuned model") see no model;
    the next upload completes it. The same for a download into the local cache."""
    from kakugo.storage import COMPLETE, is_complete_dir

    src = tmp_path / "model"
    src.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (src / name).write_bytes(b"x" * 1000)
    storage = Storage(s3_bucket + "/runs/a")
    fs = storage.fs
    storage.fs = CutAfter(fs, "open_output_stream", 1)
    with pytest.raises(StorageError, match="writing"):
        storage.upload_dir(src, "gla_Latn/model")
    storage.fs = fs
    assert storage.list("gla_Latn/model") == ["gla_Latn/model/config.json"]  # looks like one
    assert not storage.is_complete("gla_Latn/model")
    storage.upload_dir(src, "gla_Latn/model")  # the next run
    assert storage.is_complete("gla_Latn/model")
    assert len(storage.list("gla_Latn/model")) == 4

    cache = tmp_path / "cache"
    storage.fs = CutAfter(fs, "open_input_stream", 2)
    with pytest.raises(StorageError, match="reading"):
        storage.download_dir("gla_Latn/model", cache)
    storage.fs = fs
    assert (cache / "config.json").is_file() and not is_complete_dir(cache)
    storage.download_dir("gla_Latn/model", cache)
    assert is_complete_dir(cache) and (cache / COMPLETE).read_text().startswith("3 files")
