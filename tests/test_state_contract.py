"""
The shared-state contract (L{tests.state_contract}) for the in-process
store, L{llmproxy.state.MemoryState}: stores on one L{MemoryHub} share it as
processes share a real store.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import TestCase

from llmproxy.state import MemoryHub, MemoryState, StateStore
from tests.state_contract import StateContract


class MemoryContractTests(StateContract, TestCase):
    def make_store(self, clock: IReactorTime) -> StateStore:
        store = MemoryState(clock, MemoryHub())
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def make_peer(self, store: StateStore, clock: IReactorTime) -> StateStore:
        assert isinstance(store, MemoryState)
        peer = MemoryState(clock, store.hub)
        peer.startService()
        self.addCleanup(peer.stopService)
        return peer
