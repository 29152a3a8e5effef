"""What kakugo asks Ray for (a GPU type on every engine bundle and training worker, the
teacher's autoscaling) in Ray's own config types, and which device a stage is priced at."""

import pytest

from kakugo.accelerators import device_of, device_of_resources
from kakugo.config import load_config
from tests.conftest import TINY_STUDENT

GPU_RUN = [*TINY_STUDENT, "teacher.engine.accelerator=gpu", "serving.engine.accelerator=gpu",
           "training.use_gpu=true", "cluster.teacher_accelerator_type=H100",
           "cluster.serving_accelerator_type=H200", "cluster.training_accelerator_type=H200"]


@pytest.mark.parametrize(("resources", "device"), [
    ({"CPU": 192, "GPU": 8, "accelerator_type:H100": 1, "memory": 1e12}, "H100"),
    ({"CPU": 8, "GPU": 1}, "GPU"),                       # a GPU node that names no type
    ({"CPU": 16, "accelerator_type:H100": 1}, "CPU"),    # a type but no GPU to use
    ({"CPU": 4}, "CPU"),
])
def test_a_nodes_device_is_read_from_its_ray_resources(resources, device):
    assert device_of_resources(resources) == device


def test_a_stage_is_priced_at_the_type_of_the_nodes_that_held_it():
    nodes = {"a": "H100", "b": "H100", "c": "A100", "head": "CPU"}
    assert device_of(["a", "b"], gpu=True, requested=None, nodes=nodes) == "H100"
    assert device_of(["a", "b"], gpu=False, requested="H100", nodes=nodes) == "CPU"
    # mixed or unknown nodes: the type asked for, else a generic GPU
    assert device_of(["a", "c"], gpu=True, requested="H100", nodes=nodes) == "H100"
    assert device_of(["a", "c"], gpu=True, requested=None, nodes=nodes) == "GPU"
    assert device_of([], gpu=True, requested=None, nodes=nodes) == "GPU"


def test_the_asked_for_gpu_type_reaches_every_engine_bundle_in_rays_engine_config():
    from ray.serve.llm import LLMConfig

    from kakugo.serving import ServedModel, Teacher, llm_config

    config = load_config("configs/tiny-cpu.yaml", [*GPU_RUN,
                                                   "teacher.engine.tensor_parallel_size=2"])
    teacher = LLMConfig(**Teacher(config).llm_config())
    assert teacher.accelerator_type == "H100"
    bundles = teacher.get_engine_config().placement_bundles
    assert bundles == [{"GPU": 1, "CPU": 1, "accelerator_type:H100": 0.001}] * 2
    # a CPU engine asks for none (Ray refuses a type with CPU bundles)
    cpu = load_config("configs/tiny-cpu.yaml", [*TINY_STUDENT,
                                                "cluster.serving_accelerator_type=H200"])
    model = ServedModel("s", "embedded:tiny-granite", "student", cpu.serving.engine,
                        cpu.serving.students, accelerator_type="H200")
    assert "accelerator_type" not in llm_config(model)
    assert LLMConfig(**llm_config(model)).accelerator_type is None


def test_the_teachers_replicas_scale_with_the_pending_work():
    from ray.serve.llm import LLMConfig

    from kakugo.serving import Teacher

    config = load_config("configs/tiny-cpu.yaml", [
        *TINY_STUDENT, "teacher.engine.replicas=2", "teacher.engine.max_replicas=6",
        "teacher.engine.batch_size=32", "teacher.engine.max_num_seqs=64"])
    teacher = Teacher(config)
    assert teacher.autoscaling
    scaling = LLMConfig(**teacher.llm_config()).deployment_config["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"], scaling["max_replicas"],
            scaling["target_ongoing_requests"]) == (2, 2, 6, 64)
    fixed = Teacher(load_config("configs/tiny-cpu.yaml", [*TINY_STUDENT,
                                                          "teacher.engine.replicas=2"]))
    assert not fixed.autoscaling
    assert LLMConfig(**fixed.llm_config()).deployment_config["autoscaling_config"][
        "max_replicas"] == 2


@pytest.mark.parametrize(("batch_size", "max_num_seqs", "replicas"),
                         [(8, 16, (1, None)), (256, 256, (8, 32)), (32, 100, (2, 2))])
def test_ray_data_keeps_every_teacher_engine_full_and_one_batch_waiting(
        batch_size, max_num_seqs, replicas):
    from ray.data.llm import ServeDeploymentProcessorConfig

    from kakugo.serving import Teacher

    low, high = replicas
    config = load_config("configs/tiny-cpu.yaml", [
        *TINY_STUDENT, f"teacher.engine.batch_size={batch_size}",
        f"teacher.engine.max_num_seqs={max_num_seqs}", f"teacher.engine.replicas={low}",
        f"teacher.engine.max_replicas={'null' if high is None else high}"])
    teacher = Teacher(config)
    teacher.deployment = "LLMServer:teacher"  # as if deployed: the processor's config only
    processor = teacher.processor_config()
    assert isinstance(processor, ServeDeploymentProcessorConfig)
    actors = processor.get_concurrency(autoscaling_enabled=False)["size"]
    # each actor holds one batch in flight: enough for a full engine per replica the
    # teacher may scale to, plus one batch waiting behind it, and not more
    in_flight = actors * processor.batch_size
    most = high or low
    assert in_flight >= most * (max_num_seqs + batch_size)
    assert in_flight < most * (max_num_seqs + 2 * batch_size)
    # a pass with fewer batches than that starts one actor per batch (each is a process)
    for batches in (1, 2):
        small = teacher.processor_config(rows=batches * batch_size - 1)
        assert small.get_concurrency(autoscaling_enabled=False)["size"] == batches
    assert teacher.processor_config(rows=10**6).get_concurrency(
        autoscaling_enabled=False)["size"] == actors


def test_the_training_workers_ask_for_the_gpu_type():
    from kakugo.train.trainer import scaling_config

    gpu = scaling_config(load_config("configs/tiny-cpu.yaml", GPU_RUN))
    assert gpu._resources_per_worker_not_none == {
        "CPU": gpu.resources_per_worker["CPU"], "GPU": 1, "accelerator_type:H200": 0.001}
    cpu = scaling_config(load_config("configs/tiny-cpu.yaml", [
        *TINY_STUDENT, "cluster.training_accelerator_type=H200"]))
    assert not any(k.startswith("accelerator_type:") for k in cpu._resources_per_worker_not_none)
