"""The cluster configs: the launcher YAMLs validate against the JSON schema shipped inside
the ray package; the KubeRay manifests against the fields of KubeRay's CRDs that they use;
every image is the one the Dockerfile builds, on the one Ray version kakugo runs."""

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from kakugo.languages import parse_language_list, resolve

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))


def launcher_schema() -> dict:
    return json.loads(RAY_SCHEMA.read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "local-autoscaling.yaml"])
def test_launcher_configs_validate_against_rays_schema(name):
    config = load(name)
    jsonschema.validate(config, launcher_schema())
    workers = {k: v for k, v in config["available_node_types"].items()
               if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 for v in workers.values())
    assert config["idle_timeout_minutes"] > 0


def test_aws_nodes_run_the_image_with_an_s3_identity_and_detected_resources():
    config = load("aws.yaml")
    assert not config["setup_commands"]  # the image holds kakugo: nothing installed at boot
    for name, node in config["available_node_types"].items():
        assert node["resources"] == {}, f"{name}: resources are detected from the instance"
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
        assert node["node_config"]["ImageId"].startswith("ami-")
    gpu_types = {n["node_config"]["InstanceType"] for k, n in config["available_node_types"]
                 .items() if k != config["head_node_type"]}
    assert len(gpu_types) == 1  # kakugo asks for one GPU type: one node type gives it
    assert any("--ulimit" in o for o in config["docker"]["run_options"])
    # every node (and the job's client) shares the cluster's token, given to `ray start`
    # (and so to the jobs it runs) through the environment: nothing relies on ~/.ray
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    (token_file,) = config["file_mounts"]
    assert config["file_mounts"] == {token_file: "cluster/auth_token"}
    assert "/.ray/" not in token_file
    for command in (c for c in starts if "ray start" in c):
        assert command.startswith(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat {token_file}) "
                                  "ray start "), command
    assert "cluster/auth_token" in (REPO / ".gitignore").read_text().split()  # never committed


def test_a_config_missing_a_required_field_is_caught_by_the_schema():
    config = load("aws.yaml")
    del config["provider"]["type"]
    with pytest.raises(jsonschema.ValidationError, match="type"):
        jsonschema.validate(config, launcher_schema())


def test_local_autoscaling_config_leaves_the_head_no_room_for_work():
    config = load("local-autoscaling.yaml")
    assert config["provider"]["type"] == "fake_multinode"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", config["provider"]["gcs_address"])
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


# The KubeRay CRD fields these manifests use, as KubeRay v1.7.0 declares them
# (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml): names, types and enums
# outside the pod templates (Kubernetes' own PodTemplateSpec), no other fields allowed.
def _obj(props: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
_POD_TEMPLATE = {"type": "object"}
_CLUSTER_SPEC = _obj({
    "rayVersion": _STR,
    "authOptions": _obj({"mode": {"type": "string", "enum": ["disabled", "token"]},
                         "secretName": _STR, "enableK8sTokenAuth": _BOOL}),
    "enableInTreeAutoscaling": _BOOL,
    "autoscalerOptions": _obj({"idleTimeoutSeconds": _INT, "upscalingMode": {
        "type": "string", "enum": ["Default", "Aggressive", "Conservative"]}}),
    "headGroupSpec": _obj({"rayStartParams": _STR_MAP, "resources": _STR_MAP,
                           "serviceType": _STR, "template": _POD_TEMPLATE}, ("template",)),
    "workerGroupSpecs": {"type": "array", "items": _obj({
        "groupName": _STR, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
        "rayStartParams": _STR_MAP, "resources": _STR_MAP, "idleTimeoutSeconds": _INT,
        "template": _POD_TEMPLATE}, ("groupName", "maxReplicas", "minReplicas", "template"))},
}, ("headGroupSpec",))
_METADATA = _obj({"name": _STR, "namespace": _STR, "labels": _STR_MAP}, ("name",))
KUBERAY_SCHEMAS = {
    "RayCluster": _obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                        "metadata": _METADATA, "spec": _CLUSTER_SPEC},
                       ("apiVersion", "kind", "metadata", "spec")),
    "RayJob": _obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
                    "metadata": _METADATA, "spec": _obj({
                        "entrypoint": _STR, "shutdownAfterJobFinishes": _BOOL,
                        "ttlSecondsAfterFinished": _INT, "activeDeadlineSeconds": _INT,
                        "submissionMode": _STR, "runtimeEnvYAML": _STR,
                        "clusterSelector": _STR_MAP, "rayClusterSpec": _CLUSTER_SPEC})},
                   ("apiVersion", "kind", "metadata", "spec")),
}


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pod_specs(spec: dict):
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_manifests_use_the_crds_fields(name):
    doc = load(name)
    jsonschema.validate(doc, KUBERAY_SCHEMAS[doc["kind"]])
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"  # the dashboard listens on the pod network
    for group in spec["workerGroupSpecs"]:
        assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        # the autoscaler starts a group from 0 only for resources it knows the group has
        assert any(k.startswith("accelerator_type:") for k in group["resources"])


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_every_kuberay_pod_has_the_s3_identity_region_and_shared_memory(name):
    service_account = load("kuberay/serviceaccount.yaml")
    assert "eks.amazonaws.com/role-arn" in service_account["metadata"]["annotations"]
    for group, pod in _pod_specs(_cluster_spec(load(name))):
        assert pod["serviceAccountName"] == service_account["metadata"]["name"], group
        shm = [v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium")
               == "Memory"]
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("AWS_REGION"), f"{group}: no AWS_REGION"
            assert "HF_HUB_ENABLE_HF_TRANSFER" not in env  # hf_transfer is not installed
            assert any(m["mountPath"] == "/dev/shm" and m["name"] in shm
                       for m in container["volumeMounts"]), f"{group}: /dev/shm"


def test_kuberay_rayjob_runs_the_job_script_from_the_image_and_shuts_down(data_dir):
    job = load("kuberay/rayjob.yaml")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    args = shlex.split(job["spec"]["entrypoint"])
    workdir = "/home/ray/kakugo/"  # where the Dockerfile puts the repository
    assert "WORKDIR " + workdir.rstrip("/") in (REPO / "Dockerfile").read_text()
    assert args[:2] == ["python", workdir + "jobs/distill.py"]
    options = dict(zip(args[2::2], args[3::2], strict=True))
    assert (REPO / options["--config"].removeprefix(workdir)).is_file()
    assert [resolve(x, data_dir).flores_code for x in parse_language_list(options["--languages"])] \
        == ["gla_Latn", "cym_Latn", "yor_Latn"]
    # the documented switch to an existing cluster names the RayCluster of raycluster.yaml
    text = (CLUSTER / "kuberay" / "rayjob.yaml").read_text()
    assert f"ray.io/cluster: {load('kuberay/raycluster.yaml')['metadata']['name']}" in text


def _images() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for match in re.finditer(r"^\s*(?:-\s*)?image:\s*(\S+)", path.read_text(), re.MULTILINE):
            found.setdefault(match.group(1), set()).add(path.name)
    return found


def test_every_image_in_cluster_is_the_dockerfiles_on_the_one_ray_version():
    dockerfile = (REPO / "Dockerfile").read_text()
    variants = set(re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.MULTILINE))
    assert variants == {"gpu", "cpu"}
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)[1]
    images = _images()
    assert images, "no image named in cluster/"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name.endswith("/kakugo"), image
        assert tag in {f"{version}-{v}" for v in variants}, image
    assert len(images) == 1  # one image for the launcher and the KubeRay manifests
    # one Ray version: the Dockerfile's base images, the manifests and the installed ray
    ray_versions = set(re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.MULTILINE))
    for path in CLUSTER.rglob("*.yaml"):
        ray_versions |= set(re.findall(r'rayVersion:\s*"?([\d.]+)', path.read_text()))
    assert ray_versions == {ray.__version__}
    pinned = re.search(r'"ray\[[^\]]+\]>=([\d.]+),<', (REPO / "pyproject.toml").read_text())
    assert ray.__version__.startswith(pinned[1])
