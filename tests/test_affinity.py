"""
Prompt-cache affinity (#13 part 4): a conversation sticks to one key of a
backend while that key is free, moves minimally when it cools, and the
status endpoint shows each key's cached-token share.  Through the proxy in
memory, asserting the key the fake upstream saw; hypothesis for the
hashing.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any, Callable, cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends.health import ModelBreakers
from llmproxy.backends.keypool import KeyPool

from llmproxy.backends.prompt_cache import PromptCacheCounts, tokens_of
from llmproxy.config import ApiKey, ConfigError
from llmproxy.exchange.attempts import AttemptQueue
from llmproxy.exchange.runtime import Upstreams
from llmproxy.routing.affinity import preference, ranked, weight
from llmproxy.routing.resolve import Route, Target
from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunk, chat_chunks, chat_completion, config_data,
    make_config, responses_events, responses_object,
)
from llmproxy.sse import DONE, encode_event
from tests.harness import MemoryProxy, in_thread, sdk, start

KEYS = {"sk-a": "openai#1", "sk-b": "openai#2", "sk-c": "openai#3"}
RATE_LIMITED = Reply(429, {"error": {"message": "Rate limit reached", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}},
                     {"retry-after": "30"})


def three_keys(proxy_keys: list[str] | None = None, **backend: Any) -> Any:
    def make(upstream: str) -> dict[str, Any]:
        extra = {"proxy_keys": proxy_keys} if proxy_keys else {}
        return config_data({"openai": backend_data(upstream, *KEYS, **backend)},
                           failure_handling={"retries_per_target": 0}, **extra)
    return make


def seen_key(proxy: MemoryProxy) -> str:
    """
    The name of the key the upstream's last request came with.
    """
    token = proxy.fake.requests[-1].headers["authorization"].partition(" ")[2]
    return KEYS[token]


def ask(proxy: MemoryProxy, conversation: str | None, **fields: Any) -> str:
    """
    A chat completion in C{conversation} (named by the C{session_id}
    header); the key that served it.
    """
    headers = {"session_id": conversation} if conversation is not None else {}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **fields}
    answer = proxy.post("/v1/chat/completions", body, headers)
    assert answer.status == 200, answer
    return seen_key(proxy)


class StickinessTests(SynchronousTestCase):
    def test_one_conversation_one_key(self) -> None:
        """
        The same conversation reaches the same key across 1,000 requests
        with 3 keys, whichever way it is named.
        """
        proxy = MemoryProxy(three_keys())
        served = Counter(ask(proxy, "conv-1") for _ in range(1000))
        self.assertEqual(len(served), 1, served)
        cached = Counter(ask(proxy, None, prompt_cache_key="pck-7") for _ in range(50))
        self.assertEqual(len(cached), 1, cached)

    def test_spread_even(self) -> None:
        """
        1,000 conversations spread over 3 keys within 10% of even.
        """
        proxy = MemoryProxy(three_keys())
        served = Counter(ask(proxy, f"conversation-{i}") for i in range(1000))
        self.assertEqual(set(served), set(KEYS.values()))
        for name, count in served.items():
            self.assertLessEqual(abs(count - 1000 / 3), 1000 / 3 * 0.1, served)

    def test_without_conversation_round_robin(self) -> None:
        """
        Requests that name no conversation keep the round-robin rotation,
        even between conversation requests.
        """
        proxy = MemoryProxy(three_keys())
        plain = []
        for _ in range(6):
            plain.append(ask(proxy, None))
            ask(proxy, "conv-1")
        self.assertEqual(plain, ["openai#1", "openai#2", "openai#3"] * 2)

    def test_off(self) -> None:
        """
        With C{affinity: off}, a conversation rotates over the keys like
        any request.
        """
        proxy = MemoryProxy(three_keys(affinity="off"))
        served = [ask(proxy, "conv-1") for _ in range(6)]
        self.assertEqual(served, ["openai#1", "openai#2", "openai#3"] * 2)

    def test_same_choice_everywhere(self) -> None:
        """
        Two proxies (two workers, two machines) choose the same key for a
        conversation: nothing but the hash decides.
        """
        one, two = MemoryProxy(three_keys()), MemoryProxy(three_keys())
        ask(two, None)  # a different rotation state
        for i in range(30):
            self.assertEqual(ask(one, f"c{i}"), ask(two, f"c{i}"))


class SDKTests(TestCase):
    async def test_prompt_cache_key_over_http(self) -> None:
        """
        The OpenAI SDK's C{prompt_cache_key}, over real connections: three
        keys serve one conversation from one key, and another conversation
        may use another.
        """
        proxy = await start(self, three_keys(proxy_keys=["pk"]))

        def call() -> list[str]:
            served = []
            with sdk(proxy.url, "pk") as client:
                for i in range(12):
                    client.chat.completions.create(
                        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                        prompt_cache_key="project-1" if i % 2 else "project-2")
                    token = proxy.fake.requests[-1].headers["authorization"].partition(" ")[2]
                    served.append(KEYS[token])
            return served

        served = await in_thread(call)
        self.assertEqual(len(set(served[1::2])), 1, served)
        self.assertEqual(len(set(served[0::2])), 1, served)
        self.assertEqual(proxy.fake.requests[-1].body["prompt_cache_key"], "project-1")


class CoolingTests(SynchronousTestCase):
    def test_cooling_moves_only_its_conversations(self) -> None:
        """
        When a key cools, only the conversations on it move (spread over
        the others), each to one key it then keeps; the others stay.  Once
        the key is free again they come back to it.
        """
        proxy = MemoryProxy(three_keys())
        names = [f"conversation-{i}" for i in range(120)]
        before = {n: ask(proxy, n) for n in names}
        proxy.fake.by_key["sk-b"] = [RATE_LIMITED]
        during = {n: ask(proxy, n) for n in names}
        moved = {n for n in names if during[n] != before[n]}
        self.assertEqual(moved, {n for n in names if before[n] == "openai#2"})
        self.assertEqual({during[n] for n in moved}, {"openai#1", "openai#3"})
        self.assertEqual({n: ask(proxy, n) for n in names}, during, "moved once, then stays")
        del proxy.fake.by_key["sk-b"]
        proxy.advance(31)
        self.assertEqual({n: ask(proxy, n) for n in names}, before)

    def test_failover_within_a_request_follows_affinity(self) -> None:
        """
        A request whose key answers 429 goes on with its conversation's
        next key (the one it will keep while the first cools).
        """
        proxy = MemoryProxy(three_keys())
        first = ask(proxy, "conv-9")
        token = {v: k for k, v in KEYS.items()}[first]
        proxy.fake.by_key[token] = [RATE_LIMITED]
        count = len(proxy.fake.requests)
        second = ask(proxy, "conv-9")
        self.assertEqual(len(proxy.fake.requests), count + 2)
        self.assertEqual(second, ranked(_conversation_key(proxy), KEYS.values())[1])
        self.assertEqual(ask(proxy, "conv-9"), second)


def _conversation_key(proxy: MemoryProxy) -> str:
    """
    The conversation key of C{session_id: conv-9} without a proxy key.
    """
    from llmproxy.routing.conversation import conversation_of

    found = conversation_of(lambda n: "conv-9" if n == "session_id" else None, {}, None, "")
    assert found is not None
    return found.key


def _chat_usage(prompt: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _chat_stream(prompt: int, cached: int) -> list[bytes]:
    chunks = chat_chunks("gpt-4o", ["hi"])[:-1]
    usage = {**chat_chunk("gpt-4o", {}), "choices": [], "usage": _chat_usage(prompt, cached)}
    return chunks + [encode_event(usage), DONE]


def _responses_stream(prompt: int, cached: int) -> list[bytes]:
    canned = b'"input_tokens":3,"input_tokens_details":{"cached_tokens":0}'
    mine = f'"input_tokens":{prompt},"input_tokens_details":{{"cached_tokens":{cached}}}'
    events = responses_events("gpt-4o", ["hi"])
    assert any(canned in e for e in events)
    return [e.replace(canned, mine.encode()) for e in events]


class CachedShareTests(SynchronousTestCase):
    def keys_status(self, proxy: MemoryProxy) -> dict[str, Any]:
        answer = proxy.get("/v1/llmproxy/status")
        self.assertEqual(answer.status, 200)
        keys = answer.json()["backends"]["openai"]["keys"]
        return {k["name"]: k["prompt_cache"] for k in keys}

    def test_share_per_key_chat(self) -> None:
        """
        The status endpoint shows each key's prompt and cached tokens and
        the cached share, from the answers' usage, whole and streamed
        (Chat Completions: C{prompt_tokens_details}).
        """
        proxy = MemoryProxy(three_keys())
        answer = {**chat_completion("gpt-4o", "hi"), "usage": _chat_usage(1000, 900)}
        proxy.fake.by_key["sk-a"] = [Reply(200, answer)]
        proxy.fake.by_key["sk-b"] = [Stream(_chat_stream(1000, 500))]
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        for body in (chat, streamed, chat, chat):  # keys a, b, c (the fake's 3 tokens), a
            self.assertEqual(proxy.post("/v1/chat/completions", body).status, 200)
        status = self.keys_status(proxy)
        self.assertEqual(status["openai#1"], {"answers": 2, "prompt_tokens": 2000,
                                              "cached_tokens": 1800, "cached_share": 0.9})
        self.assertEqual(status["openai#2"], {"answers": 1, "prompt_tokens": 1000,
                                              "cached_tokens": 500, "cached_share": 0.5})
        self.assertEqual(status["openai#3"], {"answers": 1, "prompt_tokens": 3,
                                              "cached_tokens": 0, "cached_share": 0.0})

    def test_share_per_key_responses(self) -> None:
        """
        The same from a Responses backend (C{input_tokens_details}),
        whole and streamed.
        """
        proxy = MemoryProxy(three_keys(type="openai-responses"))
        whole = responses_object("gpt-4o", "hi")
        whole["usage"] = {**whole["usage"], "input_tokens": 200,
                          "input_tokens_details": {"cached_tokens": 50}}
        proxy.fake.by_key["sk-a"] = [Reply(200, whole)]
        proxy.fake.by_key["sk-b"] = [Stream(_responses_stream(300, 297))]
        for stream in (False, True):
            answer = proxy.post("/v1/responses", {"model": "gpt-4o", "input": "hi",
                                                  "stream": stream})
            self.assertEqual(answer.status, 200)
        status = self.keys_status(proxy)
        self.assertEqual(status["openai#1"], {"answers": 1, "prompt_tokens": 200,
                                              "cached_tokens": 50, "cached_share": 0.25})
        self.assertEqual(status["openai#2"], {"answers": 1, "prompt_tokens": 300,
                                              "cached_tokens": 297, "cached_share": 0.99})

    def test_no_answers_yet(self) -> None:
        proxy = MemoryProxy(three_keys())
        self.assertEqual(self.keys_status(proxy)["openai#1"],
                         {"answers": 0, "prompt_tokens": 0, "cached_tokens": 0,
                          "cached_share": None})

    def test_errors_do_not_count(self) -> None:
        """
        Only answers count: a failed attempt's key counts nothing.
        """
        proxy = MemoryProxy(three_keys())
        proxy.fake.by_key["sk-a"] = [RATE_LIMITED]
        ask(proxy, None)
        status = self.keys_status(proxy)
        self.assertEqual((status["openai#1"]["answers"], status["openai#2"]["answers"]), (0, 1))

    def test_kept_across_reloads(self) -> None:
        """
        A reload that keeps a key keeps its totals.
        """
        proxy = MemoryProxy(three_keys())
        ask(proxy, None)
        service = proxy.service
        data = config_data({"openai": backend_data("http://upstream.test/v1", "sk-a", "sk-c")})
        service.use_config(make_config(data))
        self.assertEqual(self.keys_status(proxy)["openai#1"]["answers"], 1)


class CountsTests(SynchronousTestCase):
    def test_tokens_of(self) -> None:
        self.assertEqual(tokens_of(_chat_usage(10, 4)), (10, 4))
        self.assertEqual(tokens_of({"input_tokens": 8,
                                    "input_tokens_details": {"cached_tokens": 8}}), (8, 8))
        self.assertEqual(tokens_of({"prompt_tokens": 5}), (5, 0))
        self.assertEqual(tokens_of({"prompt_tokens": 5,
                                    "prompt_tokens_details": {"cached_tokens": 9}}), (5, 5))
        self.assertIsNone(tokens_of({"prompt_tokens": True}))
        self.assertIsNone(tokens_of({"completion_tokens": 5}))

    def test_odd_usage_is_ignored(self) -> None:
        counts = PromptCacheCounts()
        counts.record("k", {"prompt_tokens": "many"})
        counts.record("k", {"prompt_tokens": 4, "prompt_tokens_details": None})
        self.assertEqual(counts.shown("k"), {"answers": 1, "prompt_tokens": 4,
                                             "cached_tokens": 0, "cached_share": 0.0})


class ConfigTests(SynchronousTestCase):
    def backend(self, **fields: Any) -> Any:
        data = config_data({"openai": backend_data("http://u.test/v1", "sk-a", **fields)})
        return make_config(data).backends["openai"]

    def test_default_and_values(self) -> None:
        self.assertEqual(self.backend().affinity, "conversation")
        self.assertEqual(self.backend(affinity="off").affinity, "off")
        self.assertEqual(self.backend(affinity=False).affinity, "off", "YAML's bare off")

    def test_unknown_value(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.backend(affinity="sticky")
        self.assertIn("affinity", str(caught.exception))


class _Backend:
    """
    What the attempt queue reads of a backend: its affinity setting, and
    maybe a key preference (as the ChatGPT-account backend has).
    """

    def __init__(self, affinity: str = "conversation",
                 prefer: Callable[[ApiKey], float] | None = None) -> None:
        self.config = SimpleNamespace(affinity=affinity)
        if prefer is not None:
            self.key_preference = prefer


def _queue(backends: dict[str, _Backend], *elements: str, policy: str = "km",
           conversation: str | None = "conv") -> AttemptQueue:
    clock = Clock()
    pools = {name: KeyPool(name, [ApiKey(f"{name}#{i}", f"v{i}") for i in range(1, 4)], clock)
             for name in backends}
    breakers = {name: ModelBreakers(clock) for name in backends}
    upstreams = Upstreams(cast(Any, backends), pools, breakers)
    targets = []
    for element in elements:
        backend, _, model = element.partition(":")
        backend, _, pin = backend.partition(".")
        targets.append(Target(backend, model, {}, False, key=f"{backend}#{pin}" if pin else None))
    return AttemptQueue(Route(tuple(targets), policy), upstreams, clock, 5.0, conversation)


def _names(queue: AttemptQueue) -> list[str]:
    return [f"{s.target.backend}:{s.key.name if s.key else None}" for s in queue.queue]


class QueueTests(SynchronousTestCase):
    def test_each_element_in_its_backends_order(self) -> None:
        """
        On a route over two backends, each element's keys come in the
        conversation's order for its backend (policy C{mk}: first keys
        first); a backend with affinity off rotates.
        """
        queue = _queue({"a": _Backend(), "b": _Backend("off")}, "a:m", "b:m", policy="mk")
        a = ranked("conv", ["a#1", "a#2", "a#3"])
        self.assertEqual(_names(queue), [f"a:{a[0]}", "b:b#1", f"a:{a[1]}", "b:b#2",
                                         f"a:{a[2]}", "b:b#3"])

    def test_pinned_key_stays(self) -> None:
        queue = _queue({"a": _Backend()}, "a.2:m")
        self.assertEqual(_names(queue), ["a:a#2"])

    def test_spent_account_last(self) -> None:
        """
        A backend's preference sends a spent account last, whatever the
        conversation's order; without a conversation, it orders alone.
        """
        heaviest = ranked("conv", ["a#1", "a#2", "a#3"])[0]
        scores = {"a#1": 10.0, "a#2": 80.0, "a#3": 40.0, heaviest: 0.0}
        backend = _Backend(prefer=lambda k: scores[k.name])
        self.assertEqual(_names(_queue({"a": backend}, "a:m"))[-1], f"a:{heaviest}")
        plain = _names(_queue({"a": backend}, "a:m", conversation=None))
        self.assertEqual(plain, [f"a:{n}" for n in sorted(scores, key=lambda n: -scores[n])])


NAMES = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True)


class HashingTests(SynchronousTestCase):
    def test_stable_values(self) -> None:
        """
        The weights are a fixed function (blake2b), the same in every
        process and version: changing them would move every conversation.
        """
        self.assertEqual(weight("conversation", "openai#1"), 0x2AA591DA14F3A4C9)
        self.assertEqual(ranked("conversation", ["openai#1", "openai#2", "openai#3"]),
                         ["openai#3", "openai#2", "openai#1"])

    @given(st.text(), NAMES, st.randoms())
    def test_order_free(self, conversation: str, names: list[str], rnd: Any) -> None:
        """
        The ranking depends on the set of names, not their order.
        """
        shuffled = list(names)
        rnd.shuffle(shuffled)
        self.assertEqual(ranked(conversation, names), ranked(conversation, shuffled))

    @given(st.text(), NAMES, st.data())
    def test_removing_a_candidate(self, conversation: str, names: list[str], data: Any) -> None:
        """
        Removing a key moves only the conversations that were on it, each
        to its second choice; adding one back restores the first.
        """
        gone = data.draw(st.sampled_from(names))
        before = ranked(conversation, names)
        after = ranked(conversation, [n for n in names if n != gone])
        self.assertEqual(after, [n for n in before if n != gone])

    @given(st.lists(st.text(), min_size=1, max_size=30, unique=True), NAMES, st.text(min_size=1))
    def test_adding_a_candidate(self, conversations: list[str], names: list[str],
                                new: str) -> None:
        """
        A new key takes conversations only for itself: none moves between
        the old keys.
        """
        if new in names:
            return
        for c in conversations:
            old, now = ranked(c, names)[0], ranked(c, names + [new])[0]
            self.assertIn(now, (old, new))

    def test_preference_with_a_backend_preference(self) -> None:
        """
        A backend's own preference (an account's window left) only sends
        its spent keys last; among the others the conversation decides.
        """
        keys = [ApiKey(f"k{i}", f"v{i}") for i in range(4)]
        spent = {"k0", "k2"}
        for c in (f"conv-{i}" for i in range(40)):
            prefer = preference(c, lambda k: 0.0 if k.name in spent else 55.0)
            order = [k.name for k in sorted(keys, key=lambda k: -prefer(k))]
            self.assertEqual(set(order[2:]), spent)
            self.assertEqual(order, [n for n in ranked(c, [k.name for k in keys])
                                     if n not in spent]
                             + [n for n in ranked(c, [k.name for k in keys]) if n in spent])

