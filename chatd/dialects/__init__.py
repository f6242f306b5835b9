"""chatd.dialects ~~~ Client dialects: what a caller is answered in, one module each.

A dialect reads its clients' requests into a :class:`~chatd.neutral.ChatRequest`
and renders neutral :class:`~chatd.neutral.Reply` and
:class:`~chatd.neutral.Event` objects into its own bodies and stream framing.
It knows nothing of wire formats, so every upstream reaches every dialect.
"""
