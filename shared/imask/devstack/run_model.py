"""The model `imask run` runs: the registry's champion (IMASK_MODEL=imask-masker@champion), as the fleet would.

Where the registry (the stack's MLflow, or IMASK_REGISTRY_URI) has no champion yet, the run registers its variant
as a new version and gives it the champion alias, forced past the gate with a recorded reason (the gate lets a
first holder in only with an evaluation): the promotion audit (experiment imask-promotions) shows that the run
did it. With a champion in place nothing is written, so repeating it changes nothing.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from imask.registry.refs import ModelRef, RegistryError
from imask.registry.store import DEFAULT_MODEL_NAME

CHAMPION = "champion"


@dataclass
class RunModel:
    env: dict[str, str]      # what the workers get: IMASK_MODEL, or IMASK_VARIANT
    summary: dict[str, object]

    @property
    def line(self) -> str:
        s = self.summary
        if s.get("version"):
            made = "; registered and made champion by this run" if s.get("registered") else ""
            return f"{s['version']} ({s['ref']}, variant {s['variant']}{made}); MLflow UI {s['ui']}"
        why = f" ({s['error']})" if s.get("error") else ""
        return f"built-in variant {s['variant']}, not from the registry{why}"


def reachable(uri: str, timeout: float = 3.0) -> None:
    """MLflow's /health, so that an absent server fails in seconds, not after the client's retries."""
    if not uri.startswith(("http://", "https://")):
        return  # a file or database store: nothing to ask
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):  # nosec B310
            return
    except (OSError, urllib.error.URLError) as exc:
        raise RegistryError(f"model registry at {uri} unreachable: {getattr(exc, 'reason', exc)}") from None


def ensure_champion(uri: str, variant: str, name: str = DEFAULT_MODEL_NAME) -> tuple[dict[str, object], bool]:
    """The champion of `name` at `uri` (registering `variant` as the first one if there is none) and whether this
    call registered it."""
    from imask.engine.variants import get_variant
    from imask.registry.store import Registry

    reachable(uri)
    registry = Registry(uri)
    registered = False
    if CHAMPION not in registry.aliases(name):
        info = registry.register(get_variant(variant), name,
                                 description=f"built-in variant {variant}, registered by imask run (no champion yet)")
        if CHAMPION not in registry.aliases(name):  # another run may have got there first: keep its choice
            registry.promote(ModelRef(name, version=info.version), CHAMPION, force=True,
                             reason=f"imask run: {name} had no {CHAMPION}; the run's variant {variant} takes it "
                             "without an evaluation (run `imask model eval` on it)")
            registered = True
    champion = registry.info(ModelRef(name, alias=CHAMPION))
    return champion.as_dict(), registered


def choose(uri: str, variant: str, explicit_variant: bool) -> RunModel:
    """The champion unless the run was told a built-in variant; the built-in one when the registry is away."""
    if explicit_variant:
        return RunModel({"IMASK_VARIANT": variant}, {"variant": variant, "error": "--variant given"})
    ref = f"{DEFAULT_MODEL_NAME}@{CHAMPION}"
    try:
        info, registered = ensure_champion(uri, variant)
    except RegistryError as exc:
        return RunModel({"IMASK_VARIANT": variant}, {"variant": variant, "error": str(exc)})
    version = f"{info['name']}/{info['version']}"
    ui = f"{uri.rstrip('/')}/#/models/{info['name']}/versions/{info['version']}"
    return RunModel({"IMASK_MODEL": ref, "IMASK_REGISTRY_URI": uri},
                    {"ref": ref, "version": version, "variant": info["variant"], "registered": registered,
                     "registry_uri": uri, "ui": ui, "sha256": info["sha256"]})
