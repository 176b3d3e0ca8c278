"""Offline checks of the deployment files (`make deploy-check`) and the dependency lock (`make lock`).

`checks.py` validates the kustomize overlays (kubernetes-validate's strict schemas, KEDA's vendored ScaledObject
schema), docker-compose.yml (the compose-spec schema), the GitHub workflows (actionlint and their schema) and the
Dockerfiles (`dockerfile.py`); `tools.py` installs the Go tools into `.cache/tools`; `lock.py` writes
requirements.lock from the working environment. Nothing here is imported by a service.
"""
