"""The cluster configs: the launcher YAML validates against the JSON schema shipped inside
the ray package; the KubeRay manifests have the fields the operator requires and match
the Ray version we run."""

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from kakugo.languages import parse_language_list, resolve

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))


def test_aws_launcher_config_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load("aws.yaml")
    jsonschema.validate(config, schema)
    workers = {k: v for k, v in config["available_node_types"].items()
               if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 for v in workers.values())
    assert all(any(r.startswith("accelerator_type:") for r in v["resources"])
               for v in workers.values())
    assert config["idle_timeout_minutes"] > 0


def test_a_config_missing_a_required_field_is_caught_by_the_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load("aws.yaml")
    del config["provider"]["type"]
    with pytest.raises(jsonschema.ValidationError, match="type"):
        jsonschema.validate(config, schema)


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(c["image"] and c["name"] for c in head["template"]["spec"]["containers"])
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            assert container["image"]
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) > 0


def test_kuberay_raycluster_has_the_required_fields():
    cluster = load("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"])


def test_kuberay_rayjob_runs_the_job_script_and_shuts_down(data_dir):
    job = load("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(job["spec"]["rayClusterSpec"])
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["python", "jobs/distill.py"]
    options = dict(zip(args[2::2], args[3::2], strict=True))
    assert (CLUSTER.parent / options["--config"]).is_file()
    assert [resolve(x, data_dir).flores_code for x in parse_language_list(options["--languages"])] \
        == ["gla_Latn", "cym_Latn", "yor_Latn"]
