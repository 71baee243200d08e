"""
llmproxy: an OpenAI-compatible LLM proxy on Twisted.
"""

__version__ = "0.1.0"
