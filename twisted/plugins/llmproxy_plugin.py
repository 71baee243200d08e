from twisted.application.service import ServiceMaker

llmproxy = ServiceMaker(
    "llmproxy", "llmproxy.tap", "OpenAI-compatible LLM proxy", "llmproxy"
)
