"""The web chat in headless Chromium against a real gateway on the loopback swarm: sign in by
cookie, a conversation streams and continues (answers equal the library's), stop cancels the
generation, HTML in messages is inert; screenshots go to artifacts/gateway/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import GenerationParams, SwarmClient
from tests.client.cdp import Browser
from tests.client.conftest import GatewayServer, poll

pytestmark = pytest.mark.swarm

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "gateway"
PAYLOAD = 'look <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> **bold**'


@pytest.fixture(scope="module")
def chat_gateway(gateway_factory) -> GatewayServer:
    return gateway_factory(max_new_tokens_limit=400, default_max_new_tokens=64)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Browser:
    b = Browser(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


def _type_and_send(browser: Browser, text: str) -> None:
    browser.eval(f"document.getElementById('input').value = {json.dumps(text)}")
    browser.eval("document.getElementById('ask').requestSubmit()")


def _last_answer(browser: Browser) -> dict:
    return browser.eval(
        "(() => { const all = document.querySelectorAll('.msg.assistant');"
        " const m = all[all.length - 1];"
        " return m ? {text: m.innerText, chunks: Number(m.dataset.chunks || 0),"
        " done: m.dataset.done === '1', stopped: m.dataset.stopped === '1',"
        " error: m.dataset.error === '1', count: all.length} : null; })()"
    )


def test_sign_in_stream_continue_stop_and_inert_html(
    browser: Browser, chat_gateway: GatewayServer, token: str, swarm_client: SwarmClient
):
    browser.goto(chat_gateway.url + "/")
    poll(lambda: browser.eval("!document.getElementById('login').hidden"), 30, "the sign-in form")
    poll(
        lambda: (
            browser.eval("document.getElementById('model').textContent") == swarm_client.model_name
        ),
        30,
        "the model name",
    )
    assert browser.eval("document.getElementById('state').textContent") == "swarm connected"

    browser.eval(f"document.getElementById('token').value = {json.dumps(token)}")
    browser.eval("document.getElementById('login-form').requestSubmit()")
    poll(lambda: browser.eval("!document.getElementById('chat').hidden"), 30, "the chat")
    # The session is an HttpOnly cookie: the page's script can read no secret.
    assert browser.eval("document.cookie") == ""
    assert token not in (browser.eval("JSON.stringify(localStorage)") or "")

    browser.eval("document.getElementById('max-tokens').value = 24")
    browser.eval("document.getElementById('temperature').value = 0")
    question = [{"role": "user", "content": "What is a block?"}]
    _type_and_send(browser, question[0]["content"])
    first = poll(lambda: (a := _last_answer(browser)) and a["done"] and a, 120, "the answer")
    expected = swarm_client.generate(question, GenerationParams(max_new_tokens=24)).text
    assert first["chunks"] > 1  # streamed, not one final edit
    assert first["text"].strip() == expected.strip()

    follow = [*question, {"role": "assistant", "content": expected}]
    follow.append({"role": "user", "content": "And a server?"})
    _type_and_send(browser, "And a server?")
    second = poll(
        lambda: (a := _last_answer(browser)) and a["count"] == 2 and a["done"] and a,
        120,
        "the second answer",
    )
    expected2 = swarm_client.generate(follow, GenerationParams(max_new_tokens=24)).text
    assert second["text"].strip() == expected2.strip()
    stored = json.loads(browser.eval("localStorage.getItem('petals-chat-conversation')"))
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    browser.screenshot(ARTIFACTS / "webchat.png")

    # Stop: a long answer, stopped after its first tokens; the gateway cancels the generation.
    metrics = chat_gateway.app.state.metrics
    cancelled = metrics.stops.labels("/v1/chat/completions", "cancelled")
    before = cancelled._value.get()
    browser.eval("document.getElementById('max-tokens').value = 400")
    _type_and_send(browser, "Tell me a long story.")
    poll(lambda: (_last_answer(browser) or {}).get("chunks", 0) >= 2, 120, "the story to start")
    browser.eval("document.getElementById('stop').click()")
    stopped = poll(lambda: (a := _last_answer(browser)) and a["stopped"] and a, 30, "the stop")
    assert not stopped["done"]
    poll(lambda: cancelled._value.get() == before + 1, 30, "the gateway to cancel")
    assert browser.eval("document.getElementById('send').disabled") is False

    # HTML in a message, typed or in a stored answer, is shown as text and never runs.
    stored = json.loads(browser.eval("localStorage.getItem('petals-chat-conversation')"))
    stored.append({"role": "assistant", "content": PAYLOAD})
    browser.eval(
        f"localStorage.setItem('petals-chat-conversation', {json.dumps(json.dumps(stored))})"
    )
    browser.goto(chat_gateway.url + "/")
    poll(lambda: browser.eval("!document.getElementById('chat').hidden"), 30, "the chat again")
    browser.eval("document.getElementById('max-tokens').value = 2")
    _type_and_send(browser, PAYLOAD)
    poll(lambda: (a := _last_answer(browser)) and a["done"] and a, 120, "the last answer")
    assert browser.eval("document.querySelectorAll('#messages img, #messages script').length") == 0
    assert browser.eval("window.__pwned === undefined") is True
    shown = browser.eval("document.getElementById('messages').innerText")
    assert shown.count('<img src=x onerror="window.__pwned=1">') == 2
    assert browser.eval("document.querySelectorAll('#messages strong').length") >= 2

    # New chat empties the page and the browser's copy.
    browser.eval("document.getElementById('new').click()")
    assert browser.eval("document.querySelectorAll('.msg').length") == 0
    assert browser.eval("localStorage.getItem('petals-chat-conversation')") == "[]"


def test_phone_screenshot(chat_gateway: GatewayServer, tmp_path):
    phone = Browser(tmp_path / "phone")
    try:
        phone.send(
            "Emulation.setDeviceMetricsOverride",
            width=390,
            height=800,
            deviceScaleFactor=2,
            mobile=True,
        )
        phone.goto(chat_gateway.url + "/")
        poll(lambda: phone.eval("!document.getElementById('login').hidden"), 30, "the form")
        # Readable on a phone: nothing wider than the screen.
        assert phone.eval("document.documentElement.scrollWidth") <= 390
        phone.screenshot(ARTIFACTS / "webchat-phone.png")
    finally:
        phone.close()
