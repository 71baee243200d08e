"""
Backends: the upstreams llmproxy forwards to (C{openai},
C{openai-responses}, C{mock}), their key pools, health and the relay that
streams their answers.
"""
