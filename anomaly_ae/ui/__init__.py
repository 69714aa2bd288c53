"""The inspection console (`anomaly-ae ui`): the runs under some folders, over HTTP.

`catalog` finds and summarises runs (no web code); `app` is the Starlette application; `charts`
draws the trend charts as inline SVG. Nothing here writes to a run folder except the review
decisions, through `anomaly_ae.reviews`.
"""
