"""In-memory store of Responses API results: `previous_response_id`, retrieval and deletion.

Bounded LRU (`--responses-store-size`; 0 stores nothing): each entry keeps the response object
and the conversation it ends, as chat messages (its input turns and the assistant's answer,
without reasoning and without `instructions`, which OpenAI does not carry over), so a later
request continues it. Lives in the server process: a restart forgets everything.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from server.protocol.chat import ChatMessage
from server.protocol.responses import ResponseObject


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: ResponseObject
    conversation: tuple[ChatMessage, ...]


class ResponseStore:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> None:
        """Store (or refresh) `entry`, evicting the least recently used beyond capacity."""
        if self.capacity <= 0:
            return
        key = entry.response.id
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """The entry, marked as recently used; None when unknown or evicted."""
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        return self._entries.pop(response_id, None) is not None
