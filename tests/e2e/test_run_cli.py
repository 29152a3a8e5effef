"""The main entry point on the tiny-cpu config, with the output root on a real S3 server."""

import json
import subprocess
import sys

import boto3
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_run_records_the_batch_on_s3(s3_bucket, s3_server, data_dir):
    out = f"{s3_bucket}/runs/demo"
    proc = subprocess.run(
        [sys.executable, "-m", "kakugo.cli", "run", "--config", "configs/tiny-cpu.yaml",
         "--languages", "Scottish Gaelic", "--output", out],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    body = s3.get_object(Bucket=bucket, Key="runs/demo/run.json")["Body"].read()
    manifest = json.loads(body)
    assert [lang["flores_code"] for lang in manifest["languages"]] == ["gla_Latn"]
    assert manifest["config"]["teacher"]["model"] == "embedded:smollm2-135m-instruct"
    assert s3_server["AWS_SECRET_ACCESS_KEY"] not in body.decode() + proc.stderr + proc.stdout
