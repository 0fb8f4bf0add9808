"""Arrow schemas of the lake's datasets (the contracts between stages)."""

from __future__ import annotations

import pyarrow as pa

# The canonical interaction row (DESIGN.md): what extract writes and the demo store holds.
INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("event_id", pa.string()),
    ]
)

# One row per (user, rank): what recommend writes and publish reads.
RECOMMENDATIONS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("rank", pa.int16()), ("item_id", pa.string()), ("score", pa.float32())]
)

# What an id that is not valid UTF-8 starts with once read (U+FFFD, then the bytes in hex):
# extract marks such ids (recsys.io.sources.files) and validate quarantines them.
INVALID_UTF8_MARK = "\ufffd"
