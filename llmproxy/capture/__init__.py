"""
Wire capture: what crossed the wire, client side and upstream side, as
JSONL entries written off the reactor, secrets redacted
(L{llmproxy.capture.entries} describes an entry).

  - L{install}: the pieces put together for the service;
  - L{request} and L{backend}: the client side (the site's requests) and
    the upstream side (a wrapper around each backend);
  - L{recorder}: ids, filters, and how a request's entries find it;
  - L{entries}, L{redact}: an entry's shape, and secrets out of it;
  - L{writer}, L{rotate}: the buffer, its thread, the file and its rotation.
"""
