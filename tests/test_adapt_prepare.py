"""
The adapt pipeline where the exchange applies it (L{llmproxy.exchange.prepare})
and end to end: a test-only step is seen by the upstream for both
frontends, proxy-only fields never reach it, untouched bodies keep the
client's bytes, and the default pipeline prepares exactly the bytes the
code before the pipeline did.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.adapt.pipeline import PROXY_FIELD_PREFIX, Context, Pipeline, Shaped, Step
from llmproxy.adapt.reasoning import REASONING, adapt_chat_for_reasoning, is_reasoning_model
from llmproxy.adapt import steps
from llmproxy.adapt.usage import needs_usage, with_usage
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import ProxyError
from llmproxy.exchange import prepare
from llmproxy.exchange.prepare import prepare_chat, prepare_responses
from llmproxy.routing.resolve import Target
from llmproxy.translate import chat_to_responses_request, responses_to_chat_request
from tests.harness import post, start

TAGGED = "gpt-4o-tagged"
KNOB = PROXY_FIELD_PREFIX + "tag"


def _tag(body: Mapping[str, Any], context: Context) -> Shaped:
    """
    For the one model C{TAGGED} only, set C{user} (a field both dialects
    carry) from the proxy-only field C{KNOB}.
    """
    if context.model != TAGGED:
        return Shaped(body)
    return Shaped({**body, "user": f"tag:{context.knobs.get(KNOB, 'none')}"}, (), True)


def _no_metadata(body: Mapping[str, Any], context: Context) -> Shaped:
    if "metadata" not in body:
        return Shaped(body)
    return Shaped({k: v for k, v in body.items() if k != "metadata"}, ("metadata",), True)


TAG = Step("tag", _tag, consumes=frozenset({KNOB}))
NO_METADATA = Step("no-metadata", _no_metadata)
PIPELINE = Pipeline((REASONING, TAG, NO_METADATA))


def target(body: Mapping[str, Any], changed: bool = False) -> Target:
    return Target("b", str(body.get("model")), body, changed)


def raw(body: Mapping[str, Any]) -> bytes:
    """
    Client bytes no re-encoding would produce.
    """
    return b" " + json.dumps(body, indent=1).encode() + b" "


CHAT_BODY = {"model": TAGGED, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES_BODY = {"model": TAGGED, "input": "hi"}


def both_frontends(
    body_for: Callable[[str], dict[str, Any]], history: Sequence[Any] | None = (),
) -> list[tuple[str, str, tuple[bytes, tuple[str, ...]], bytes]]:
    """
    Prepare C{body_for(frontend)} with L{PIPELINE} for every frontend ×
    upstream pair: C{(frontend, upstream, (bytes, dropped), client bytes)}.
    """
    out = []
    for upstream in (CHAT, RESPONSES):
        body = body_for(CHAT)
        out.append((CHAT, upstream, prepare_chat(
            target(body), raw(body), upstream, None, pipeline=PIPELINE), raw(body)))
        body = body_for(RESPONSES)
        out.append((RESPONSES, upstream, prepare_responses(
            target(body), raw(body), upstream, None, history, pipeline=PIPELINE), raw(body)))
    return out


def base(frontend: str) -> dict[str, Any]:
    return dict(CHAT_BODY if frontend == CHAT else RESPONSES_BODY)


class PrepareTests(SynchronousTestCase):
    """
    L{prepare_chat} and L{prepare_responses} run the pipeline they are given.
    """

    def test_step_for_one_model(self) -> None:
        for frontend, upstream, (payload, dropped), _ in both_frontends(
                lambda f: {**base(f), KNOB: "x"}):
            sent = json.loads(payload)
            self.assertEqual(sent["user"], "tag:x", (frontend, upstream))
            self.assertEqual(dropped, ())

    def test_other_models_untouched(self) -> None:
        """
        For another model the step does nothing: between same dialects
        the client's own bytes go upstream.
        """
        for frontend, upstream, (payload, dropped), original in both_frontends(
                lambda f: {**base(f), "model": "gpt-4o"}):
            self.assertNotIn("user", json.loads(payload))
            if frontend == upstream:
                self.assertEqual(payload, original, (frontend, upstream))
            else:
                self.assertNotEqual(payload, original)

    def test_proxy_fields_never_sent(self) -> None:
        """
        A consumed field is gone whether or not its step acted, and is not
        reported as dropped (translation would have reported it).
        """
        for model in (TAGGED, "gpt-4o"):
            for frontend, upstream, (payload, dropped), _ in both_frontends(
                    lambda f: {**base(f), "model": model, KNOB: "y"}):
                self.assertNotIn(KNOB.encode(), payload, (model, frontend, upstream))
                self.assertEqual(dropped, ())

    def test_dropped_from_steps_and_translation(self) -> None:
        """
        Steps' dropped parameters join the reasoning step's and
        translation's, in the order they ran.
        """
        chat = {"model": "o3", "messages": [{"role": "user", "content": "hi"}],
                "temperature": 1, "metadata": {"a": "b"}, "stop": "x"}
        _, dropped = prepare_chat(target(chat), raw(chat), RESPONSES, None, pipeline=PIPELINE)
        self.assertEqual(dropped, ("temperature", "metadata", "stop"))
        responses = {"model": "o3", "input": "hi", "temperature": 1, "metadata": {"a": "b"},
                     "store": True}
        _, dropped = prepare_responses(target(responses), raw(responses), CHAT, None, (),
                                       pipeline=PIPELINE)
        self.assertEqual(dropped, ("metadata", "store", "temperature"))

    def test_default_pipeline(self) -> None:
        """
        Without a pipeline, prepare runs L{prepare.DEFAULT_PIPELINE}.
        """
        self.patch(prepare, "DEFAULT_PIPELINE", PIPELINE)
        body = {**CHAT_BODY, KNOB: "z"}
        payload, _ = prepare_chat(target(body), raw(body), CHAT)
        self.assertEqual(json.loads(payload)["user"], "tag:z")
        body = {**RESPONSES_BODY, KNOB: "z"}
        payload, _ = prepare_responses(target(body), raw(body), CHAT)
        self.assertEqual(json.loads(payload)["user"], "tag:z")

    def test_unknown_history(self) -> None:
        """
        A Responses body whose history llmproxy does not know cannot go to
        a Chat upstream, whatever the pipeline.
        """
        body = {**RESPONSES_BODY, "previous_response_id": "resp_1"}
        with self.assertRaises(ProxyError) as raised:
            prepare_responses(target(body), raw(body), CHAT, None, None, pipeline=PIPELINE)
        self.assertEqual(raised.exception.status, 404)


# The body preparation as it was before the pipeline, kept as the oracle
# the default pipeline must match.

def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _old_prepare_chat(
    target: Target, original: bytes, backend_dialect: str, reasoning: Any = None,
) -> tuple[bytes, tuple[str, ...]]:
    body: Mapping[str, Any] = target.body
    dropped: tuple[str, ...] = ()
    changed = target.changed
    if is_reasoning_model(target.model, reasoning):
        adapted = adapt_chat_for_reasoning(body, target.model, reasoning)
        if adapted.dropped or adapted.renamed or adapted.body != body:
            body, dropped, changed = adapted.body, adapted.dropped, True
    if backend_dialect == RESPONSES:
        translated = chat_to_responses_request(body)
        return _dumps(translated.body), dropped + translated.dropped
    return (_dumps(body) if changed else original), dropped


def _old_prepare_responses(
    target: Target, original: bytes, backend_dialect: str, reasoning: Any = None,
    history: Sequence[Mapping[str, Any]] | None = (),
) -> tuple[bytes, tuple[str, ...]]:
    if backend_dialect == RESPONSES:
        return (_dumps(target.body) if target.changed else original), ()
    if history is None:
        raise ProxyError("unknown history", status=404)
    translated = responses_to_chat_request(target.body, history)
    body, dropped = translated.body, translated.dropped
    if is_reasoning_model(target.model, reasoning):
        adapted = adapt_chat_for_reasoning(body, target.model, reasoning)
        body, dropped = adapted.body, dropped + adapted.dropped
    return _dumps(body), dropped


def _outcome(prepare: Callable[..., tuple[bytes, tuple[str, ...]]], *args: Any) -> Any:
    try:
        return prepare(*args)
    except ProxyError as e:
        return type(e), e.status
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        return type(e), str(e)


texts = st.text(max_size=6)
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text"]),
                                        "text": texts}), max_size=2)
chat_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
     "content": texts | parts}), max_size=4)
chat_bodies = st.fixed_dictionaries(
    {"messages": chat_messages},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
              "max_tokens": st.integers(1, 99), "max_completion_tokens": st.integers(1, 99),
              "reasoning_effort": st.sampled_from(["low", "high"]), "logprobs": st.booleans(),
              "top_logprobs": st.integers(0, 3), "frequency_penalty": st.floats(0, 1),
              "seed": st.integers(0, 9), "stop": texts, "n": st.just(1), "stream": st.booleans(),
              "metadata": st.dictionaries(texts, texts, max_size=1), "user": texts,
              "unknown": st.integers()},
)
responses_bodies = st.fixed_dictionaries(
    {"input": texts | st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
         "content": texts}), max_size=3)},
    optional={"instructions": texts, "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
              "max_output_tokens": st.integers(1, 99),
              "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high"])}),
              "text": st.fixed_dictionaries({"verbosity": st.sampled_from(["low", "high"])}),
              "store": st.booleans(), "stream": st.booleans(), "user": texts,
              "unknown": st.integers()},
)
models = st.sampled_from(["gpt-4o", "o1-preview", "o1-mini", "o1", "o3-mini", "o4-mini",
                          "gpt-5", "gpt-5.1-codex", "custom-think", "gpt-4.1"])
patterns = st.sampled_from([None, re.compile("custom-|gpt-4\\.1")])
known_histories = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": texts}), max_size=2)
#: One time in four, a conversation llmproxy does not know.
histories = st.integers(0, 3).flatmap(lambda n: known_histories if n else st.none())


class SameAsBeforeTests(SynchronousTestCase):
    """
    The default pipeline prepares, for every frontend × upstream pair, the
    bytes and dropped parameters the code before the pipeline prepared.
    """

    @given(chat_bodies, models, patterns, st.booleans(), st.sampled_from([CHAT, RESPONSES]))
    @settings(max_examples=300, deadline=None)
    def test_chat(self, body: dict[str, Any], model: str, pattern: re.Pattern[str] | None,
                  changed: bool, upstream: str) -> None:
        t = target({"model": model, **body}, changed)
        client = raw(t.body)
        old = _outcome(_old_prepare_chat, t, client, upstream, pattern)
        if upstream == CHAT and needs_usage(t.body) and isinstance(old[0], bytes):
            # Streamed usage is asked for on the client's behalf (tests.test_usage).
            old = (with_usage(json.loads(old[0]), client if old[0] == client else None), old[1])
        self.assertEqual(_outcome(prepare_chat, t, client, upstream, pattern), old)

    @given(responses_bodies, models, patterns, st.booleans(), st.sampled_from([CHAT, RESPONSES]),
           histories)
    @settings(max_examples=300, deadline=None)
    def test_responses(self, body: dict[str, Any], model: str, pattern: re.Pattern[str] | None,
                       changed: bool, upstream: str, history: list[Any] | None) -> None:
        t = target({"model": model, **body}, changed)
        client = raw(t.body)
        self.assertEqual(
            _outcome(prepare_responses, t, client, upstream, pattern, history),
            _outcome(_old_prepare_responses, t, client, upstream, pattern, history))


def two_dialects(upstream: str) -> dict[str, Any]:
    return {
        "default_backend": "chat",
        "backends": {
            "chat": {"type": "openai", "base_url": upstream, "api_key": "sk-chat"},
            "resp": {"type": "openai-responses", "base_url": upstream, "api_key": "sk-resp"},
        },
    }


class EndToEndTests(TestCase):
    """
    A test-only step, through the proxy to the upstream, for both frontends
    and both upstream dialects.
    """

    async def _through(self, path: str, bodies: Sequence[Any]) -> list[tuple[Any, dict[str, str]]]:
        """
        Post C{bodies} to a proxy whose pipeline is L{PIPELINE}:
        what the upstream saw of each, and the answer's headers.
        """
        self.patch(steps, "DEFAULT_PIPELINE", PIPELINE)
        proxy = await start(self, two_dialects)
        out = []
        for body in bodies:
            status, headers, _ = await post(self, proxy.url + path, body)
            self.assertEqual(status, 200)
            out.append((proxy.fake.requests[-1], dict(headers)))
        self.assertEqual(len(proxy.fake.requests), len(bodies))
        return out

    async def _check(self, path: str, body: dict[str, Any]) -> None:
        bodies = [{**body, "model": f"{backend}:{TAGGED}", KNOB: backend, "metadata": {"k": "v"}}
                  for backend in ("chat", "resp")]
        for backend, (seen, headers) in zip(("chat", "resp"), await self._through(path, bodies)):
            self.assertEqual(seen.path.rsplit("/", 1)[-1],
                             "completions" if backend == "chat" else "responses")
            self.assertEqual(seen.body["user"], f"tag:{backend}")
            self.assertNotIn(KNOB.encode(), seen.raw)
            self.assertNotIn("metadata", seen.body)
            self.assertEqual(headers["x-llmproxy-dropped-params"], "metadata")

    async def test_chat_frontend(self) -> None:
        await self._check("/v1/chat/completions", CHAT_BODY)

    async def test_responses_frontend(self) -> None:
        await self._check("/v1/responses", RESPONSES_BODY)

    async def test_untouched_bytes(self) -> None:
        """
        With steps that change nothing for this model, the upstream gets
        the client's own bytes.
        """
        client = b'{ "model" : "gpt-4o",  "messages": [{"role":"user","content":"hi"}] }'
        [(seen, headers)] = await self._through("/v1/chat/completions", [client])
        self.assertEqual(seen.raw, client)
        self.assertNotIn("x-llmproxy-dropped-params", headers)
