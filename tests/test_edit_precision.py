"""
Edit precision tuning (#13 part 3): coding agents' edit-failure messages
tune the request that retries the edit (lower temperature and top_p), once;
a failing answer tunes the conversation's next request.  Through HTTP,
asserting what the fake upstream received.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.adapt.edits import EDITS, EditTuning, answer_failure, find_failure, tuned
from llmproxy.adapt.reasoning import REASONING
from llmproxy.adapt.steps import DEFAULT_PIPELINE
from llmproxy.config import ConfigError
from llmproxy.config.edits import EditPrecisionConfig
from llmproxy.testing import Reply, Stream, chat_chunks, chat_completion, openai_config
from llmproxy.testing.builders import make_config
from tests.harness import Answer, MemoryProxy, in_thread, sdk, start

#: Real failure messages, as each agent sends them to its model (trimmed).
FIXTURES: dict[str, str] = {
    # Cline replace_in_file, in the user message that carries the tool result.
    "cline search-block": (
        "[replace_in_file for 'cypress/support/e2e.ts'] Result:\n"
        "The tool execution failed with the following error:\n<error>\nThe SEARCH block:\n"
        "import 'cypress-real-events';\nimport 'cypress-file-upload';\n"
        "...does not match anything in the file.\n\nThis is likely because the SEARCH block "
        "content doesn't match exactly with what's in the file, or if you used multiple "
        "SEARCH/REPLACE blocks they may not have been in the order they appear in the file."
        "\n\nThe file was reverted to its original state:\n"),
    "roo no-match": (
        "[apply_diff for 'generated/exceptions.py'] Result:\n<error_details>\n"
        "No sufficiently similar match found (88% similar, needs 100%)\n\nDebug Info:\n"
        "- Similarity Score: 88%\n- Required Threshold: 100%\n- Search Range: start to end\n"),
    "roo apply-diff": (
        "Unable to apply diff to file: /repo/src/main.py\n\n<error_details>\n"
        "Line 12: content does not match\n</error_details>"),
    "gemini no-occurrence": (
        "Failed to edit, 0 occurrences found for old_string in /repo/README.md. No edits "
        "made. The exact text in old_string was not found. Ensure you're not escaping "
        "content incorrectly and check whitespace, indentation, and context."),
    "gemini occurrence-count": "Failed to edit, expected 1 occurrence but found 3.",
    "aider search-replace": (
        "# 1 SEARCH/REPLACE block failed to match!\n\n## SearchReplaceNoExactMatch: This "
        "SEARCH block failed to exactly match lines in app.py\n<<<<<<< SEARCH\nold\n=======\n"
        "new\n>>>>>>> REPLACE\n"),
    "aider udiff": "UnifiedDiffNoMatch: hunk failed to apply!\n\napp.py does not contain lines "
                   "that match the diff you provided!",
    "crush old-string": "old_string not found in file. Make sure it matches exactly, including "
                        "whitespace and line breaks",
    "opencode edit": "Error: Found multiple matches for oldString. Provide more surrounding "
                     "lines in oldString to identify the correct match.",
    # behaviour.md §12's wording for OpenCode's patch tool.
    "opencode patch": "Error: patch contains fuzzy matches (fuzz 3) in src/app.ts",
    "codex apply-patch": (
        "apply_patch verification failed: Failed to find expected lines in "
        "/workspace/output/las.js:\nold line"),
}

SETTINGS = make_config({}).edit_precision
CLINE = FIXTURES["cline search-block"]


def _chat(*messages: tuple[str, str], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", **fields,
            "messages": [{"role": role, "content": text} for role, text in messages]}


class PatternTests(SynchronousTestCase):
    """
    The shipped patterns find each agent's messages, in the newest turn only.
    """

    def test_every_agent(self) -> None:
        agents = {name.split()[0] for name in (p.name for p in SETTINGS.patterns)}
        self.assertEqual(agents, {"cline", "roo", "gemini", "aider", "crush", "opencode",
                                  "codex"})
        for name, text in FIXTURES.items():
            body = _chat(("user", "fix it"), ("assistant", "done"), ("user", text))
            self.assertEqual(find_failure(body, "chat", SETTINGS), name, text)

    @given(st.sampled_from(sorted(FIXTURES)), st.text(max_size=200), st.text(max_size=200))
    def test_found_anywhere_in_the_turn(self, name: str, before: str, after: str) -> None:
        body = _chat(("assistant", "calling"), ("tool", before + FIXTURES[name] + after),
                     ("user", "go on"))
        self.assertEqual(find_failure(body, "chat", SETTINGS), name)

    @settings(max_examples=300)
    @given(st.text(max_size=500))
    def test_ordinary_text(self, text: str) -> None:
        self.assertIsNone(find_failure(_chat(("user", text)), "chat", SETTINGS))

    def test_ordinary_code(self) -> None:
        """
        Source code (this project's, its tests but this module aside)
        matches no pattern.
        """
        root = Path(__file__).parent.parent
        files = [p for p in [*root.glob("llmproxy/**/*.py"), *root.glob("tests/*.py")]
                 if p.name != os.path.basename(__file__)]
        self.assertGreater(len(files), 100)
        for path in files:
            self.assertIsNone(answer_failure(path.read_text(encoding="utf-8"), SETTINGS), path)

    def test_long_tool_results(self) -> None:
        """
        Only the start of each text is searched, where agents put their
        failure messages (Cline's opens with its preamble, before the
        SEARCH block it quotes).
        """
        search = "x = 1\n" * 2000
        cline = CLINE.replace("import 'cypress-file-upload';\n", search)
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "[replace_in_file for 'a.ts'] Result:"},
            {"type": "text", "text": cline}, {"type": "text", "text": "<environment_details>"}]}]}
        self.assertEqual(find_failure(body, "chat", SETTINGS), "cline search-block")
        late = _chat(("tool", search + FIXTURES["crush old-string"]))
        self.assertIsNone(find_failure(late, "chat", SETTINGS))

    def test_history_is_not_the_turn(self) -> None:
        body = _chat(("user", CLINE), ("assistant", "retried"), ("user", "thanks"))
        self.assertIsNone(find_failure(body, "chat", SETTINGS))

    def test_responses_tool_output(self) -> None:
        fixture = FIXTURES["codex apply-patch"]
        body = {"input": [
            {"type": "message", "role": "user", "content": "edit"},
            {"type": "custom_tool_call", "name": "apply_patch", "call_id": "c", "input": "x"},
            {"type": "custom_tool_call_output", "call_id": "c", "output": fixture}]}
        self.assertEqual(find_failure(body, "responses", SETTINGS), "codex apply-patch")
        body["input"].append({"type": "message", "role": "assistant", "content": "ok"})
        self.assertIsNone(find_failure(body, "responses", SETTINGS))


class TunedTests(SynchronousTestCase):
    """
    What tuning changes (pure).
    """

    tuning = EditTuning("x", EditPrecisionConfig(models={"gpt": 0.2, "gpt-4o-mini": 0.0},
                                                 max_top_k=20))

    @given(st.one_of(st.none(), st.floats(0, 2)), st.one_of(st.none(), st.floats(0, 1)))
    def test_caps(self, temperature: float | None, top_p: float | None) -> None:
        body = {k: v for k, v in (("temperature", temperature), ("top_p", top_p))
                if v is not None}
        changes = {c.param: c.new for c in tuned(body, "gpt-4o", None, self.tuning)}
        out = {**body, **changes}
        self.assertEqual(out["temperature"], min(temperature if temperature is not None
                                                 else 2, 0.2))
        self.assertEqual(out["top_p"], min(top_p if top_p is not None else 1, 0.3))

    def test_longest_keyword_and_top_k(self) -> None:
        changes = tuned({"top_k": 50}, "gpt-4o-mini", None, self.tuning)
        self.assertEqual({c.param: c.new for c in changes},
                         {"temperature": 0.0, "top_p": 0.3, "top_k": 20})
        self.assertNotIn("top_k", [c.param for c in tuned({}, "x", None, self.tuning)])

    def test_reasoning_models_untouched(self) -> None:
        self.assertEqual(tuned({"temperature": 1}, "o3", None, self.tuning), ())

    def test_before_the_reasoning_step(self) -> None:
        steps = list(DEFAULT_PIPELINE.steps)
        self.assertLess(steps.index(EDITS), steps.index(REASONING))


def _proxy(**section: Any) -> MemoryProxy:
    return MemoryProxy(lambda upstream: openai_config(upstream, edit_precision=section)
                       if section else openai_config(upstream))


def _post(proxy: MemoryProxy, body: Any, **headers: str) -> Answer:
    return proxy.post("/v1/chat/completions", body, headers)


class RequestSideTests(SynchronousTestCase):
    """
    A failure in the newest turn tunes that request, and only it.
    """

    def test_tuned_once(self) -> None:
        proxy = _proxy()
        answer = _post(proxy, _chat(("assistant", "edit"), ("user", CLINE), temperature=0.7))
        self.assertEqual(answer.status, 200)
        sent = proxy.fake.requests[-1].body
        self.assertEqual((sent["temperature"], sent["top_p"]), (0.1, 0.3))
        self.assertEqual(answer.headers["x-llmproxy-tuned"],
                         "temperature 0.7->0.1, top_p unset->0.3 "
                         "(edit failure: cline search-block)")
        self.assertNotIn("x_llmproxy", proxy.fake.requests[-1].raw.decode())
        clean = _chat(("user", CLINE), ("assistant", "retried"), ("user", "ok"),
                      temperature=0.7)
        again = _post(proxy, clean)
        self.assertNotIn("x-llmproxy-tuned", again.headers)
        self.assertEqual(proxy.fake.requests[-1].body, clean)

    def test_logged(self) -> None:
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        _post(_proxy(), _chat(("user", CLINE), temperature=0.7))
        said = [formatEvent(e) for e in seen if "tuned" in e.get("log_format", "")]
        self.assertEqual(said, ["openai:gpt-4o: tuned temperature 0.7->0.1, top_p unset->0.3 "
                                "(edit failure: cline search-block)"])

    def test_model_table_and_lower_values(self) -> None:
        proxy = _proxy(models={"gpt-4o": 0.2}, min_top_p=0.5)
        _post(proxy, _chat(("user", FIXTURES["aider udiff"]), temperature=0.05, top_p=0.9))
        sent = proxy.fake.requests[-1].body
        self.assertEqual((sent["temperature"], sent["top_p"]), (0.05, 0.5))
        _post(proxy, _chat(("user", FIXTURES["aider udiff"])))
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.2)

    def test_top_k(self) -> None:
        proxy = _proxy(max_top_k=10)
        _post(proxy, _chat(("user", CLINE), top_k=40))
        self.assertEqual(proxy.fake.requests[-1].body["top_k"], 10)
        _post(proxy, _chat(("user", CLINE)))
        self.assertNotIn("top_k", proxy.fake.requests[-1].body)

    def test_excluded_agent(self) -> None:
        proxy = _proxy(exclude_agents_regex="^Aider/")
        body = _chat(("user", CLINE), temperature=0.7)
        answer = _post(proxy, body, **{"user-agent": "Aider/0.86"})
        self.assertNotIn("x-llmproxy-tuned", answer.headers)
        self.assertEqual(proxy.fake.requests[-1].body, body)
        _post(proxy, body, **{"user-agent": "Cline/3.1"})
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.1)

    def test_disabled(self) -> None:
        proxy = _proxy(enabled=False)
        body = _chat(("user", CLINE), temperature=0.7)
        self.assertNotIn("x-llmproxy-tuned", _post(proxy, body).headers)
        self.assertEqual(proxy.fake.requests[-1].body, body)

    def test_reasoning_model_loses_the_cap(self) -> None:
        proxy = _proxy()
        answer = _post(proxy, {**_chat(("user", CLINE), temperature=0.7), "model": "o3"})
        self.assertEqual(answer.status, 200)
        sent = proxy.fake.requests[-1].body
        self.assertNotIn("temperature", sent)
        self.assertNotIn("top_p", sent)
        self.assertEqual(answer.headers["x-llmproxy-dropped-params"], "temperature")
        self.assertNotIn("x-llmproxy-tuned", answer.headers)

    def test_responses_frontend(self) -> None:
        proxy = _proxy()
        answer = proxy.post("/v1/responses", {"model": "gpt-4o", "temperature": 1, "input": [
            {"type": "function_call", "name": "apply_patch", "call_id": "c", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c",
             "output": FIXTURES["codex apply-patch"]}]})
        self.assertEqual(answer.status, 200)
        sent = proxy.fake.requests[-1].body
        self.assertEqual((sent["temperature"], sent["top_p"]), (0.1, 0.3))
        self.assertIn("codex apply-patch", answer.headers["x-llmproxy-tuned"])


class OneShotTests(SynchronousTestCase):
    """
    A failing answer tunes the next request of its conversation, once.
    """

    def _failing_then_clean(self, stream: bool, session: dict[str, str]) -> MemoryProxy:
        proxy = _proxy()
        text = "The SEARCH block does not match; I will re-read the file."
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", [text[:20], text[20:]]))
                                 if stream else Reply(200, chat_completion("gpt-4o", text)))
        first = _post(proxy, _chat(("user", "edit app.py"), stream=stream), **session)
        self.assertEqual(first.status, 200)
        self.assertNotIn("x-llmproxy-tuned", first.headers)
        return proxy

    def _check_next_tuned_once(self, proxy: MemoryProxy, session: dict[str, str]) -> None:
        second = _post(proxy, _chat(("user", "go on"), temperature=0.9), **session)
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.1)
        self.assertEqual(second.headers["x-llmproxy-tuned"],
                         "temperature 0.9->0.1, top_p unset->0.3 "
                         "(edit failure: cline search-block, in the previous answer)")
        third = _post(proxy, _chat(("user", "go on"), temperature=0.9), **session)
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.9)
        self.assertNotIn("x-llmproxy-tuned", third.headers)

    def test_whole_answer(self) -> None:
        session = {"session_id": "s-1"}
        self._check_next_tuned_once(self._failing_then_clean(False, session), session)

    def test_streamed_answer(self) -> None:
        session = {"session_id": "s-2"}
        self._check_next_tuned_once(self._failing_then_clean(True, session), session)

    def test_responses_stream(self) -> None:
        """
        A Responses client's streamed answer (translated from a chat
        upstream's chunks) flags its C{prompt_cache_key} conversation.
        """
        proxy = _proxy()
        text = FIXTURES["gemini no-occurrence"]
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", [text[:30], text[30:]])))
        first = proxy.post("/v1/responses", {"model": "gpt-4o", "input": "edit",
                                             "stream": True, "prompt_cache_key": "p-1"})
        self.assertIn(b"response.completed", first.content)
        second = proxy.post("/v1/responses", {"model": "gpt-4o", "input": "go on",
                                              "prompt_cache_key": "p-1"})
        self.assertIn("gemini no-occurrence, in the previous answer",
                      second.headers["x-llmproxy-tuned"])
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.1)

    def test_other_conversations_untouched(self) -> None:
        proxy = self._failing_then_clean(False, {"session_id": "a"})
        _post(proxy, _chat(("user", "go on"), temperature=0.9), session_id="b")
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.9)

    def test_no_conversation_no_flag(self) -> None:
        proxy = self._failing_then_clean(False, {})
        _post(proxy, _chat(("user", "go on"), temperature=0.9))
        self.assertEqual(proxy.fake.requests[-1].body["temperature"], 0.9)


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertTrue(SETTINGS.active)
        self.assertEqual((SETTINGS.target_temperature, SETTINGS.min_top_p, SETTINGS.max_top_k),
                         (0.1, 0.3, None))

    def test_patterns_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"patterns": [{"name": "mine", "regex": "EDIT FAILED"}]}, f)
        config = make_config({"edit_precision": {"patterns_file": path}}).edit_precision
        self.assertEqual([p.name for p in config.patterns], ["mine"])
        self.assertEqual(find_failure(_chat(("user", "x EDIT FAILED")), "chat", config), "mine")
        self.assertIsNone(find_failure(_chat(("user", CLINE)), "chat", config))

    def test_errors(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("patterns: [{name: bad, regex: '(('}]")
        for section, word in (({"patterns_file": path}, "bad regex"),
                              ({"patterns_file": path + ".missing"}, "No such file"),
                              ({"min_top_p": 2}, "at most 1"),
                              ({"exclude_agents_regex": "("}, "bad regex"),
                              ({"temperature": 0.1}, "unknown key")):
            with self.assertRaises(ConfigError) as caught:
                make_config({"edit_precision": section})
            self.assertIn(word, str(caught.exception))
            self.assertIn("edit_precision.", str(caught.exception))


class ClineSessionTests(TestCase):
    """
    The issue's "done when": a Cline-style session reporting "SEARCH block
    does not match" gets its next request tuned, in headers and upstream
    body, through the OpenAI SDK.
    """

    async def test_cline_session(self) -> None:
        proxy = await start(self)
        proxy.fake.script += [Reply(200, chat_completion("gpt-4o", "<replace_in_file>..."))] * 2

        def session() -> tuple[Any, Any]:
            with sdk(proxy.url) as client:
                messages = [{"role": "user", "content": "rename foo to bar in app.ts"},
                            {"role": "assistant", "content": "<replace_in_file>...</replace_in_file>"},
                            {"role": "user", "content": CLINE}]
                retry = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=messages, temperature=0.7,
                    extra_headers={"session_id": "cline-task-1"})
                messages += [{"role": "assistant", "content": "retrying"},
                             {"role": "user", "content": "[replace_in_file] Result: ok"}]
                after = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=messages, temperature=0.7,
                    extra_headers={"session_id": "cline-task-1"})
                return retry.headers, after.headers

        tuned_headers, after_headers = await in_thread(session)
        self.assertEqual(tuned_headers["x-llmproxy-tuned"],
                         "temperature 0.7->0.1, top_p unset->0.3 "
                         "(edit failure: cline search-block)")
        self.assertNotIn("x-llmproxy-tuned", after_headers)
        first, second = proxy.fake.requests[-2:]
        self.assertEqual((first.body["temperature"], first.body["top_p"]), (0.1, 0.3))
        self.assertEqual(second.body["temperature"], 0.7)
        self.assertNotIn("top_p", second.body)
