"""Schemathesis hooks for tests/conformance/run.sh.

A page `cursor` is opaque: only a `next_cursor` the server issued is valid, and any other string
is 400 by contract, which no JSON Schema can express. So a generated cursor never makes a
request invalid, nor a valid one: it is dropped from the cases meant to be valid. Invalid ones
(an empty cursor) are still sent and must be refused.

A webhook `url` is valid only if its host resolves to an address the server may reach, which no
schema can say either: cases meant to be valid get a loopback URL (the servers are started with
`--webhook-allowed-networks 127.0.0.0/8`; port 9 refuses connections, so deliveries just fail).
"""

import schemathesis


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    meta = case.meta
    if (
        case.query
        and "cursor" in case.query
        and meta is not None
        and meta.generation.mode.is_positive
    ):
        del case.query["cursor"]
    if (
        meta is not None
        and meta.generation.mode.is_positive
        and case.operation.path.startswith("/v1/webhooks")
        and isinstance(case.body, dict)
        and "url" in case.body
    ):
        case.body["url"] = "http://127.0.0.1:9/hook"
