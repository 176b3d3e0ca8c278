"""`imask console`: the operators' web console (cameras, live masked previews, experiments, alerts, models).

`auth.py` (operator token or keys file, signed sessions, CSRF tokens), `live.py` (what the console keeps from
frames.masked, frames.meta and alerts: the newest masked picture per camera and its recent figures), `pages.py`
(the data of each page, assembled without servers), `sources.py` (the services it reads and changes), `tap.py`
(the Kafka reader feeding `live`), `app.py` (the FastAPI app and its templates).
"""
