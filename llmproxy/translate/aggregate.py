# -*- test-case-name: tests.test_aggregate -*-
"""
A Responses API event stream made into the one whole response a
non-streaming C{POST /v1/responses} would have returned, for upstreams
that only stream (the ChatGPT backend answers nothing but C{stream: true}).

The response of the terminal event (C{response.completed} or
C{response.incomplete}) is preferred.  When it carries no C{output} (the
ChatGPT backend sends it empty), the output is rebuilt from the stream:
the items of C{response.output_item.done} (or, lacking one, of
C{.added}), ordered by C{output_index}, their missing text, arguments and
reasoning summaries filled from the deltas.  A stream that ends with
C{response.failed}, a bare C{error} event, or no terminal event at all is
a L{StreamFailed} carrying the upstream's error object.
"""

from __future__ import annotations

from typing import Any, Iterable

from llmproxy.sse import Event, SSEParser

#: An aggregated stream's events may be as long as the body that holds
#: them (its size is capped by whoever reads it).
MAX_EVENT_BYTES = 1 << 62

#: What a stream that stopped without its final event failed with.
NO_TERMINAL = "upstream stream ended without response.completed"

_FINAL = ("response.completed", "response.incomplete")
_TEXTS = {
    # event type: (item field, list field in the item, part type, part text field)
    "response.output_text": ("content", "output_text", "text"),
    "response.refusal": ("content", "refusal", "refusal"),
    "response.reasoning_summary_text": ("summary", "summary_text", "text"),
    "response.reasoning_text": ("content", "reasoning_text", "text"),
}


class StreamFailed(Exception):
    """
    The stream ended in no answer.

    @ivar error: the upstream's error object: C{message} always,
        C{type}, C{code} and C{param} (L{None} when it gave none), and other
        fields it sent, such as C{resets_at}.
    """

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


def _error(detail: Any, default: str) -> dict[str, Any]:
    """
    An upstream error object with a message, its C{type} and C{code}
    (L{None} when it gave none).
    """
    error = dict(detail) if isinstance(detail, dict) else {}
    if not isinstance(error.get("message"), str) or not error["message"]:
        error["message"] = default
    for name in ("type", "code"):
        if not isinstance(error.get(name), str) or not error[name]:
            error[name] = None
    error.setdefault("param", None)
    return error


class _Item:
    """
    One output item as the stream built it: its latest whole form, and the
    text pieces of its parts by (list field, index).
    """

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.done = False
        self.parts: dict[tuple[str, int], dict[str, Any]] = {}
        self.pieces: dict[tuple[str, int], list[str]] = {}
        self.arguments: list[str] = []

    def built(self, status: str) -> dict[str, Any]:
        """
        The item, with what it lacks filled from the stream's pieces; one
        never finished takes the response's C{status}.
        """
        item = dict(self.item)
        for key, part in sorted(self.parts.items()):
            name, index = key
            parts = item.get(name)
            parts = list(parts) if isinstance(parts, list) else []
            if index < len(parts):
                continue
            pieces = self.pieces.get(key)
            filled = dict(part)
            field = "refusal" if part.get("type") == "refusal" else "text"
            if pieces is not None and not filled.get(field):
                filled[field] = "".join(pieces)
            parts.append(filled)
            item[name] = parts
        if item.get("type") == "function_call" and self.arguments and not item.get("arguments"):
            item["arguments"] = "".join(self.arguments)
        if not self.done and item.get("status") == "in_progress":
            item["status"] = status
        return item


class ResponsesAggregator:
    """
    Feed it a Responses event stream, in chunks of any size; L{result} is
    the whole response.
    """

    def __init__(self) -> None:
        self._parser = SSEParser(MAX_EVENT_BYTES)
        self._items: dict[int, _Item] = {}
        self._ids: dict[str, int] = {}
        self._started: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        self._failure: dict[str, Any] | None = None
        self._ended = False

    def feed(self, data: bytes) -> None:
        """
        Take the next bytes of the stream.
        """
        self.events(self._parser.feed(data))

    def events(self, events: Iterable[Event]) -> None:
        """
        Take parsed events (what L{feed} does with the bytes).
        """
        for event in events:
            if self._ended:
                return
            try:
                data = event.json()
            except ValueError:
                continue  # comments, [DONE], or no JSON: nothing to aggregate
            if isinstance(data, dict):
                kind = data.get("type")
                self._event(kind if isinstance(kind, str) else event.event, data)

    def result(self) -> dict[str, Any]:
        """
        The whole response, once the stream ended.

        @raise StreamFailed: it failed, or stopped before its final event.
        """
        self.events(self._parser.close())
        if self._failure is not None:
            raise StreamFailed(self._failure)
        if self._final is None:
            raise StreamFailed(_error(None, NO_TERMINAL))
        response = {**self._started, **self._final}
        if not response.get("output"):
            status = str(response.get("status") or "completed")
            response["output"] = [self._items[i].built(status) for i in sorted(self._items)]
        return response

    # events

    def _event(self, kind: Any, data: dict[str, Any]) -> None:
        response = data.get("response")
        if kind in _FINAL:
            self._final = dict(response) if isinstance(response, dict) else {}
            self._final.setdefault("status", kind.rpartition(".")[2])
            self._ended = True
        elif kind == "response.failed":
            error = response.get("error") if isinstance(response, dict) else None
            self._failure = _error(error, "The upstream response failed.")
            self._ended = True
        elif kind == "error" or (kind is None and isinstance(data.get("error"), dict)):
            nested = data.get("error")
            detail = nested if isinstance(nested, dict) else \
                {k: v for k, v in data.items() if k not in ("type", "sequence_number")}
            self._failure = _error(detail, "The upstream stream failed.")
            self._ended = True
        elif kind in ("response.created", "response.in_progress") and isinstance(response, dict):
            self._started = {k: v for k, v in response.items() if k != "output"}
        elif kind in ("response.output_item.added", "response.output_item.done"):
            self._item_event(data, kind.endswith(".done"))
        elif isinstance(kind, str):
            self._piece_event(kind, data)

    def _index(self, data: dict[str, Any], item_id: Any) -> int:
        """
        The output index an event is about: its own, else its item's, else
        the next one.
        """
        index = data.get("output_index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        if isinstance(item_id, str) and item_id in self._ids:
            return self._ids[item_id]
        return max(self._items, default=-1) + 1

    def _item_event(self, data: dict[str, Any], done: bool) -> None:
        item = data.get("item")
        if not isinstance(item, dict):
            return
        index = self._index(data, item.get("id"))
        known = self._items.get(index)
        if known is None:
            known = self._items[index] = _Item(dict(item))
        elif done or not known.done:
            known.item = dict(item)
        known.done = known.done or done
        if isinstance(item.get("id"), str):
            self._ids[item["id"]] = index

    def _piece_event(self, kind: str, data: dict[str, Any]) -> None:
        base, _, step = kind.rpartition(".")
        item_id = data.get("item_id")
        if base in ("response.content_part", "response.reasoning_summary_part"):
            part = data.get("part")
            if isinstance(part, dict):
                name = "summary" if "summary" in base else "content"
                self._slot(data, item_id, base).parts[name, self._part_index(data)] = dict(part)
        elif base == "response.function_call_arguments" and step == "delta":
            self._slot(data, item_id, base).arguments.append(str(data.get("delta", "")))
        elif base == "response.function_call_arguments" and step == "done" \
                and isinstance(data.get("arguments"), str):
            self._slot(data, item_id, base).arguments = [data["arguments"]]
        elif base in _TEXTS and step in ("delta", "done"):
            name, part_type, field = _TEXTS[base]
            slot = self._slot(data, item_id, base)
            key = (name, self._part_index(data))
            slot.parts.setdefault(key, {"type": part_type, field: ""})
            if step == "delta":
                slot.pieces.setdefault(key, []).append(str(data.get("delta", "")))
            elif isinstance(data.get(field), str):
                slot.pieces[key] = [data[field]]

    def _slot(self, data: dict[str, Any], item_id: Any, base: str) -> _Item:
        """
        The item a piece belongs to; a piece of an item never announced
        starts one, of the kind the piece belongs to.
        """
        index = self._index(data, item_id)
        known = self._items.get(index)
        if known is None:
            item = _new_item(base)
            if isinstance(item_id, str):
                item["id"] = item_id
                self._ids[item_id] = index
            known = self._items[index] = _Item(item)
        return known

    @staticmethod
    def _part_index(data: dict[str, Any]) -> int:
        for name in ("content_index", "summary_index"):
            index = data.get(name)
            if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
                return index
        return 0


def _new_item(base: str) -> dict[str, Any]:
    """
    An item the stream never announced, for a piece of event type C{base}.
    """
    if base == "response.function_call_arguments":
        return {"type": "function_call", "status": "in_progress", "arguments": ""}
    if "reasoning" in base:
        return {"type": "reasoning", "summary": []}
    return {"type": "message", "role": "assistant", "status": "in_progress", "content": []}


def aggregate_responses(body: bytes) -> dict[str, Any]:
    """
    The whole response of a complete Responses event stream C{body}.

    @raise StreamFailed: the stream failed, or has no final event.
    """
    aggregator = ResponsesAggregator()
    aggregator.feed(body)
    return aggregator.result()


__all__ = ["NO_TERMINAL", "ResponsesAggregator", "StreamFailed", "aggregate_responses"]
