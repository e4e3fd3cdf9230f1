"""The service layer: OpenAI requests -> Kimi-VL prompt + media -> engine -> OpenAI objects.

`chat.py` and `completions.py` are the two services; `context.py` holds what they share
(settings, engine, admission gate), `prompt.py` renders the chat template, `images.py` and
`videos.py` prepare media, `sampling.py` maps sampling fields, `reasoning.py` splits
◁think▷ … ◁/think▷, `choices.py` accumulates each choice, `streaming.py` frames SSE events.
Nothing here knows about HTTP: routes in server/api/ call these services.
"""
