"""Shared fixtures: offline hub, evaluation data, a real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# configs/tiny-cpu.yaml trains a real student (SmolLM2-135M); tests that train, serve or
# evaluate students take the random Granite-4.0-Micro-shaped one: its architecture is the
# paper's student's, and it is about ten times faster on 2 cores
TINY_STUDENT = ["student.model=embedded:tiny-granite", "student.name=tiny-granite"]
SERVE_KEY_ENV = "KAKUGO_TEST_SERVE_KEY"  # the API key of the served app in integration tests


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local evaluation data (FLORES-200 devtest, SIB-200), from $KAKUGO_DATA_DIR."""
    value = os.environ.get("KAKUGO_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.fail("set KAKUGO_DATA_DIR to the evaluation data folder (make test does)")
    return Path(value).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Endpoint(dict):
    """The endpoint's environment (AWS_ENDPOINT_URL and test credentials), and stop() /
    start() to take it down and bring it back on the same address with its objects (moto
    keeps them in this process)."""

    def __init__(self, port: int):
        super().__init__({
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "kakugo-test-key-id",
            "AWS_SECRET_ACCESS_KEY": "kakugo-test-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
        })
        self.port = port
        self.server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint (moto) on 127.0.0.1, with test credentials in the environment."""
    endpoint = S3Endpoint(free_port())
    endpoint.start()
    saved = {k: os.environ.get(k) for k in endpoint}
    os.environ.update(endpoint)
    try:
        yield endpoint
    finally:
        endpoint.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket; returns its s3:// URI."""
    import boto3

    name = "kakugo-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = "".join(c for c in name if c.isalnum() or c == "-")
    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=name)
    return f"s3://{name}"
