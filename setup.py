from setuptools import setup

setup(
    name="llmproxy",
    version="0.1.0",
    description="OpenAI-compatible LLM proxy on Twisted",
    package_dir={"": "."},
    packages=[
        "llmproxy", "llmproxy.adapt", "llmproxy.backends", "llmproxy.capture", "llmproxy.config",
        "llmproxy.exchange", "llmproxy.frontends", "llmproxy.routing", "llmproxy.testing",
        "llmproxy.translate",
        "twisted.plugins",
    ],
    package_data={"twisted": ["plugins/llmproxy_plugin.py"],
                  "llmproxy.config": ["edit_patterns.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "twisted[tls]>=24.10",
        "klein==24.8.0",
        "pyyaml>=6",
        "service-identity>=21",
        "pyopenssl>=24",
        "prometheus_client>=0.20",
        "txredisapi>=1.4.10",
    ],
    extras_require={"test": ["hypothesis>=6.100", "openai>=1.50", "treq>=24.9"]},
    entry_points={"console_scripts": ["llmproxy = llmproxy.__main__:main"]},
)
