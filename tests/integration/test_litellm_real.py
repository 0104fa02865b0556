"""The LiteLLM adapter and ``sprout serve`` driven by the real LiteLLM package.

Three ways a LiteLLM user meets Sprout, each against fake OpenAI-compatible upstreams on
127.0.0.1 (``LITELLM_LOCAL_MODEL_COST_MAP`` is set by conftest, so importing LiteLLM
reads its price map from the package instead of the network):

* LiteLLM's SDK calling ``sprout serve`` as an OpenAI-compatible server: sync
  ``litellm.completion``, async ``litellm.acompletion``, streamed or not;
* LiteLLM's SDK with the Sprout callback registered (``litellm.callbacks``);
* LiteLLM's proxy started with the documentation's ``config.yaml`` (docs/proxy.md), which names
  ``sprout.integrations.litellm.proxy_handler``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import litellm
import pytest
import requests
import yaml
from litellm.integrations.custom_logger import CustomLogger

from sprout.directives import Directive, DirectiveSet
from sprout.factory import build_controller
from sprout.integrations import litellm as adapter
from tests.support.fake_openai_server import FakeOpenAIServer, wait_until
from tests.support.fakes import FixedPolicy
from tests.support.paths import REPO_ROOT
from tests.support.servers import free_port
from tests.support.settings import ledger_url, make_settings

#: Servers, subprocesses or a browser: seconds per test (deselect with -m "not slow").
pytestmark = pytest.mark.slow

PROXY_DOCS = REPO_ROOT / "docs" / "proxy.md"
MODEL = "llama-3-8b"
REPLY = "Paris is the capital of France. It is known for the Eiffel Tower and fine food."
BRIEF = "Always answer very briefly"
L2 = Directive("L2", system_prompt=BRIEF, max_new_tokens=16)


def ask() -> list[dict[str, str]]:
    # A fresh list per call: LiteLLM writes into what it is given.
    return [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def upstream():
    with FakeOpenAIServer(REPLY) as server:
        yield server


def _controller(tmp_path, engine=None, **settings):
    settings = make_settings(tmp_path, meter="estimate", meter_calibrate=False, **settings)
    c = build_controller(settings, engine=engine, poll=False)
    c.directives = DirectiveSet((Directive("L0"), L2))
    c.policy = FixedPolicy(L2)
    return c


def _receipts(controller) -> list:
    controller.ledger.flush()
    return controller.ledger.receipts(limit=100)


def _shaped(sent: dict) -> bool:
    """Whether a request reached the upstream shaped by L2."""
    return sent["messages"][0] == {"role": "system", "content": BRIEF} and (
        sent.get("max_tokens") == 16 or sent.get("max_completion_tokens") == 16
    )


def test_the_adapter_is_a_real_litellm_custom_logger():
    assert issubclass(adapter.SproutLiteLLM, CustomLogger)
    # The instance a proxy's config.yaml names, resolved the way LiteLLM's proxy does.
    from litellm.proxy.types_utils.utils import get_instance_fn

    handler = get_instance_fn("sprout.integrations.litellm.proxy_handler")
    assert handler is adapter.proxy_handler and isinstance(handler, CustomLogger)


# -- LiteLLM's SDK in front of `sprout serve` ----------------------------------------------------


@pytest.fixture
def sprout_serve(tmp_path, upstream):
    """``sprout serve`` (the app, under uvicorn) in front of the upstream: (url, controller)."""
    pytest.importorskip("fastapi")
    from sprout.server import create_app
    from tests.support.servers import running

    settings = make_settings(
        ledger_url(tmp_path, "serve.db"),
        meter="estimate",
        meter_calibrate=False,
        engine="openai",
        engine_base_url=upstream.url,
        engine_model=MODEL,
        engine_retries=0,
        server_threads=8,
    )
    controller = build_controller(settings, poll=False)
    controller.directives = DirectiveSet((Directive("L0"), L2))
    controller.policy = FixedPolicy(L2)
    with running(create_app(controller, settings=settings)) as url:
        yield url, controller
    controller.close()


def _sprout_headers(response) -> dict[str, str]:
    """The ``x-sprout-*`` headers LiteLLM passed on (as ``llm_provider-x-sprout-*``)."""
    headers = response._hidden_params.get("additional_headers") or {}
    return {
        k.removeprefix("llm_provider-"): v for k, v in headers.items() if "x-sprout-" in k.lower()
    }


def test_litellm_sdk_against_sprout_serve(sprout_serve, upstream):
    url, controller = sprout_serve
    call = {"model": f"openai/{MODEL}", "api_base": url, "api_key": "none", "max_retries": 0}

    answer = litellm.completion(messages=ask(), **call)
    assert answer.choices[0].message.content  # cut by L2's token cap
    headers = _sprout_headers(answer)
    assert headers["x-sprout-directive"] == "L2" and float(headers["x-sprout-gco2e"]) > 0

    async def async_calls() -> tuple[object, str]:
        answer = await litellm.acompletion(messages=ask(), **call)
        streamed = ""
        async for chunk in await litellm.acompletion(messages=ask(), stream=True, **call):
            streamed += chunk.choices[0].delta.content or ""
        return answer, streamed

    async_answer, async_streamed = asyncio.run(async_calls())
    assert _sprout_headers(async_answer)["x-sprout-directive"] == "L2"
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in litellm.completion(messages=ask(), stream=True, **call)
    )
    assert streamed and async_streamed == streamed
    assert len(upstream.requests) == 4 and all(_shaped(sent) for sent in upstream.requests)
    receipts = _receipts(controller)
    assert len(receipts) == 4
    assert {r.directive for r in receipts} == {"L2"}
    assert headers["x-sprout-request-id"] in {r.request_id for r in receipts}


# -- LiteLLM's SDK with the Sprout callback ------------------------------------------------------


@pytest.fixture
def sdk_hook(tmp_path, monkeypatch):
    controller = _controller(tmp_path, engine=adapter.LiteLLMEngine())
    hook = adapter.SproutLiteLLM(controller)
    monkeypatch.setattr(litellm, "callbacks", [hook])
    yield hook, controller
    # LiteLLM copies callbacks into its log-event lists and keeps one logger per class
    # there: the next test's hook would never hear of its outcomes.
    litellm.logging_callback_manager.remove_callback_from_all_lists(hook)
    controller.close()


async def _settled(hook, timeout_s: float = 10.0) -> None:
    """Wait until ``hook`` has no request awaiting its outcome: LiteLLM logs outcomes on a
    background task of the running loop, so the wait must be on that loop."""
    deadline = time.monotonic() + timeout_s
    while hook._pending and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_the_callback_shapes_and_records_litellm_acompletion(sdk_hook, upstream):
    hook, controller = sdk_hook
    call = {"model": f"openai/{MODEL}", "api_base": upstream.url, "api_key": "none"}

    async def calls() -> tuple[object, str]:
        answer = await litellm.acompletion(
            messages=ask(), metadata={"sprout_tenant": "acme"}, max_tokens=200, **call
        )
        streamed = ""
        async for chunk in await litellm.acompletion(messages=ask(), stream=True, **call):
            streamed += chunk.choices[0].delta.content or ""
        await _settled(hook)
        return answer, streamed

    answer, streamed = asyncio.run(calls())
    assert answer.choices[0].message.content and streamed
    assert len(upstream.requests) == 2 and all(_shaped(sent) for sent in upstream.requests)
    receipts = _receipts(controller)
    assert len(receipts) == 2 and not hook._pending
    assert {(r.directive, r.engine) for r in receipts} == {("L2", "litellm")}
    assert {r.tenant for r in receipts} == {"acme", None}
    by_tenant = {r.tenant: r for r in receipts}
    assert by_tenant["acme"].output_tokens == answer.usage.completion_tokens


def test_sdk_failures_write_no_receipt(sdk_hook, upstream):
    hook, controller = sdk_hook
    upstream.inject(500)

    async def call() -> None:
        with pytest.raises(litellm.InternalServerError):
            await litellm.acompletion(
                model=f"openai/{MODEL}",
                api_base=upstream.url,
                api_key="none",
                max_retries=0,
                messages=ask(),
            )
        await _settled(hook)

    asyncio.run(call())
    assert _shaped(upstream.requests[-1])
    assert not hook._pending and _receipts(controller) == []


def test_sync_litellm_completion_passes_the_callback_by(sdk_hook, upstream):
    # LiteLLM's synchronous path has no hook that can change a request: unchanged, no
    # receipt (sync users point api_base at `sprout serve`, tested above).
    hook, controller = sdk_hook
    litellm.completion(
        model=f"openai/{MODEL}", api_base=upstream.url, api_key="none", messages=ask()
    )
    assert upstream.requests[-1]["messages"] == ask()
    assert _receipts(controller) == [] and not hook._pending


# -- LiteLLM's proxy, configured as the docs say ------------------------------------------------


def documented_litellm_config() -> dict:
    """The LiteLLM proxy ``config.yaml`` of the LiteLLM section of docs/proxy.md."""
    text = PROXY_DOCS.read_text(encoding="utf-8").split("\n## LiteLLM\n", 1)[1]
    section = re.split(r"\n##+ ", text, maxsplit=1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the LiteLLM section has one config.yaml"
    return yaml.safe_load(blocks[0])


def test_the_documented_config_names_the_sprout_callback():
    config = documented_litellm_config()
    callbacks = config["litellm_settings"]["callbacks"]
    from litellm.proxy.types_utils.utils import get_instance_fn

    for name in [callbacks] if isinstance(callbacks, str) else callbacks:
        assert isinstance(get_instance_fn(name), adapter.SproutLiteLLM)
    (model,) = config["model_list"]
    assert model["litellm_params"]["model"].startswith("openai/")


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from receipts").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def test_the_litellm_proxy_with_the_documented_config(tmp_path, upstream):
    config = documented_litellm_config()
    config["model_list"][0]["litellm_params"]["api_base"] = upstream.url
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    policy = tmp_path / "frugal.toml"  # every recorded level shaped, whichever the LP picks
    policy.write_text(
        "".join(
            f'[[directive]]\nname = "{name}"\nsystem_prompt = "{BRIEF}"\nmax_new_tokens = 16\n\n'
            for name in ("L0", "L1", "L2")
        ),
        encoding="utf-8",
    )
    db = tmp_path / "ledger.db"
    key = "sk-" + secrets.token_hex(32)
    port = free_port()
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": key,
        "SPROUT_DB_URL": f"sqlite:///{db}",
        "SPROUT_CARBON_PROVIDER": "static",
        "SPROUT_METER": "estimate",
        "SPROUT_METER_CALIBRATE": "false",
        "SPROUT_POLICY_FILE": str(policy),
    }
    log = tmp_path / "litellm.log"
    with log.open("w", encoding="utf-8") as out:  # a file: a full pipe would block it
        proxy = subprocess.Popen(
            [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", "config.yaml", *listen],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:

        def ready() -> bool:
            assert proxy.poll() is None, "LiteLLM's proxy exited"
            try:
                return requests.get(f"{base}/health/liveliness", timeout=1).ok
            except (requests.ConnectionError, requests.Timeout):
                return False  # not up yet, or still starting on a loaded machine

        assert wait_until(ready, timeout_s=120)
        body = {"model": MODEL, "messages": ask()}
        r = requests.post(
            f"{base}/v1/chat/completions",
            json={**body, "max_tokens": 300},
            headers={**auth, "x-sprout-tenant": "acme"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-sprout-directive"] in {"L0", "L1", "L2"}
        assert float(r.headers["x-sprout-gco2e"]) > 0
        request_id = r.headers["x-sprout-request-id"]

        streamed = requests.post(
            f"{base}/v1/chat/completions",
            json={**body, "stream": True, "metadata": {"sprout_tenant": "beta"}},
            headers=auth,
            timeout=30,
        )
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        assert streamed.headers["x-sprout-request-id"] != request_id

        upstream.inject(400)  # a client error: LiteLLM does not retry it
        failed = requests.post(f"{base}/v1/chat/completions", json=body, headers=auth, timeout=30)
        assert failed.status_code >= 400
        assert len(upstream.requests) == 3 and all(_shaped(s) for s in upstream.requests)
        assert wait_until(lambda: _count(db) >= 2, timeout_s=15)
        time.sleep(0.5)  # nothing more comes
        with sqlite3.connect(db) as conn:
            rows = conn.execute("select request_id, tenant, engine from receipts").fetchall()
        assert sorted(rows) == sorted(
            [
                (request_id, "acme", "litellm"),
                (streamed.headers["x-sprout-request-id"], "beta", "litellm"),
            ]
        )
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        print(log.read_text(encoding="utf-8")[-5000:])  # shown if the test failed
