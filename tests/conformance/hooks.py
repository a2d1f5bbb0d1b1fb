"""Schemathesis hooks for tests/conformance/run.sh.

A page `cursor` is opaque: only a `next_cursor` the server issued is valid, and any other string
is 400 by contract, which no JSON Schema can express. So a generated cursor never makes a
request invalid, nor a valid one: it is dropped from the cases meant to be valid. Invalid ones
(an empty cursor) are still sent and must be refused.
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
