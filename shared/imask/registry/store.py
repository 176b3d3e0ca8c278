"""The registry on an MLflow tracking server (`imask stack up` starts one; any MLflow 3 server works).

- A **version** of registered model NAME is one variant: its model file (with sha256) and `variant.json` are the
  artifacts of a registration run; tags name the detector family and the sha256.
- An **evaluation** is an MLflow run in experiment `imask-eval`, tagged with the version, holding the figures of
  `imask eval` as metrics, each dataset (name, sha256 digest, source) as a run input, and the report as artifacts.
- **Aliases** (`champion`, `challenger`, ...) move only through `promote`, which applies the gate (gate.py) unless
  forced with a reason; every promotion, forced or not, is a run in experiment `imask-promotions` (the audit).
- **Loading** (workers, mask-api): a reference resolves to a version, its artifacts are downloaded once into a
  cache, the model file's sha256 must match the version's, and the variant then reports `NAME/VERSION`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imask.engine.detectors import packaged_model_file
from imask.engine.detectors.base import sha256_of
from imask.engine.variants import Variant
from imask.registry.gate import LEAK_TOLERANCE, RECALL_TOLERANCE, GateDecision, compare, dataset_metrics
from imask.registry.refs import ModelRef, RegistryError
from imask.registry.spec import variant_from_spec, variant_to_spec

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "imask-masker"
REGISTRY_EXPERIMENT = "imask-registry"
EVAL_EXPERIMENT = "imask-eval"
PROMOTION_EXPERIMENT = "imask-promotions"
SPEC_FILE = "variant.json"
REPORT_FILE = "report.json"
TAG_SHA = "imask.model_sha256"
TAG_MODEL = "imask.model_name"
TAG_VERSION = "imask.model_version"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: list[str]
    variant: str
    detector: str
    sha256: str
    description: str
    created_ms: int
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Registry:
    def __init__(self, tracking_uri: str, cache_dir: Path | None = None) -> None:
        # MLflow prints run URLs to stdout and logs every experiment it creates: the CLI's stdout is JSON.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)

        self.tracking_uri = tracking_uri
        self._mlflow = mlflow
        # models:/ URIs resolve through the process-wide registry URI (default: a local sqlite file): ours, always.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "imask-models"

    # -- registration ----------------------------------------------------------------------------------------
    def register(self, variant: Variant, name: str = DEFAULT_MODEL_NAME, description: str = "") -> VersionInfo:
        """A new version of NAME holding this variant and its model file (checked against the variant's sha256)."""
        model_file = Path(variant.model_path) if variant.model_path else packaged_model_file(variant.detector_request)
        digest = sha256_of(model_file.read_bytes())
        if digest != variant.model_sha256:
            raise RegistryError(f"{model_file} has sha256 {digest}, the variant expects {variant.model_sha256}")
        spec = variant_to_spec(variant)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            shutil.copyfile(model_file, folder / f"model{model_file.suffix}")
            (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
            run_id = self._run(REGISTRY_EXPERIMENT, f"register {variant.name}", params=_flat(spec),
                               tags={"imask.variant": variant.name}, artifacts=folder, artifact_path="model")
        self._ensure_registered_model(name)
        mv = self.client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id, description=description or None,
            tags={TAG_SHA: digest, "imask.variant": variant.name, "imask.detector": variant.detector,
                  "imask.spec_schema": spec["schema"]})
        log.info("version registered", extra={"model": name, "version": mv.version, "variant": variant.name})
        return self.info(ModelRef(name, version=str(mv.version)))

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="Identity Masker variants (detector, model file, thresholds, tracker, masks)")

    # -- reading ---------------------------------------------------------------------------------------------
    def _version(self, ref: ModelRef) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            if ref.alias:
                return self.client.get_model_version_by_alias(ref.name, ref.alias)
            return self.client.get_model_version(ref.name, ref.version)
        except MlflowException as exc:
            raise RegistryError(f"{ref} does not resolve at {self.tracking_uri}: {exc.message}") from None
        except Exception as exc:  # connection refused, DNS, timeouts: name the server
            raise RegistryError(f"model registry at {self.tracking_uri} unreachable: {exc}") from None

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version of a registered model."""
        from mlflow.exceptions import MlflowException

        try:
            return {k: str(v) for k, v in self.client.get_registered_model(name).aliases.items()}
        except MlflowException:
            return {}

    def info(self, ref: ModelRef) -> VersionInfo:
        mv = self._version(ref)
        aliases = [a for a, v in self.aliases(ref.name).items() if v == str(mv.version)]
        return VersionInfo(ref.name, str(mv.version), sorted(aliases), mv.tags.get("imask.variant", ""),
                           mv.tags.get("imask.detector", ""), mv.tags.get(TAG_SHA, ""), mv.description or "",
                           int(mv.creation_timestamp or 0), mv.run_id or "")

    def versions(self, name: str = DEFAULT_MODEL_NAME) -> list[VersionInfo]:
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self.info(ModelRef(name, version=str(mv.version))) for mv in found),
                      key=lambda v: int(v.version))

    def load(self, ref: ModelRef) -> Variant:
        """The variant of a version, its model file downloaded (once) and checked: what a worker runs."""
        info = self.info(ref)
        # Keyed by the registration run too: version 1 of a name on another server (the tests' own, a wiped and
        # restarted one) is another model, and must not be read from this one's cache.
        target = self.cache_dir / info.name / f"{info.version}-{info.run_id[:12]}"
        if not (target / SPEC_FILE).exists():
            staging = Path(tempfile.mkdtemp(prefix="download-", dir=self._cache_root()))
            try:
                self._mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{info.name}/{info.version}", dst_path=str(staging),
                    tracking_uri=self.tracking_uri)
            except Exception as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise RegistryError(f"could not download {info.name}/{info.version}: {exc}") from None
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        spec = json.loads((target / SPEC_FILE).read_text())
        model_files = [p for p in target.iterdir() if p.name.startswith("model.")]
        if len(model_files) != 1:
            raise RegistryError(f"{info.name}/{info.version}: expected one model file, found {model_files}")
        digest = sha256_of(model_files[0].read_bytes())
        if not digest == spec.get("model_sha256") == info.sha256:
            raise RegistryError(f"{info.name}/{info.version}: model file sha256 {digest} does not match the "
                                f"version's ({info.sha256}) and its spec's ({spec.get('model_sha256')}); "
                                "refusing to run it")
        return variant_from_spec(spec, model_path=str(model_files[0]),
                                 registry_version=f"{info.name}/{info.version}")

    def _cache_root(self) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir

    # -- evaluations -----------------------------------------------------------------------------------------
    def log_evaluation(self, ref: ModelRef, report: dict[str, Any], report_dir: Path) -> str:
        """One MLflow run for an `imask eval` report of this version: metrics, datasets as inputs, artifacts."""
        info = self.info(ref)
        metrics: dict[str, float] = {}
        for m in dataset_metrics(report).values():
            for key, value in m.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics[f"{m['name']}.{key}"] = float(value)
        spec = report["variant"]["settings"]
        return self._run(
            EVAL_EXPERIMENT, f"eval {info.name}/{info.version}", params=_flat(spec), metrics=metrics,
            tags={TAG_MODEL: info.name, TAG_VERSION: info.version, "imask.variant": info.variant,
                  "imask.eval_schema": report["schema"]},
            artifacts=report_dir, datasets=[(d["name"], d["digest"], d["source"]) for d in report["datasets"]])

    def evaluations(self, ref: ModelRef) -> dict[str, dict[str, Any]]:
        """The latest evaluation of this version on each dataset digest (digest -> figures, run id)."""
        info = self.info(ref)
        experiment = self.client.get_experiment_by_name(EVAL_EXPERIMENT)
        if experiment is None:
            return {}
        runs = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TAG_MODEL}` = '{info.name}' and tags.`{TAG_VERSION}` = '{info.version}'",
            order_by=["attributes.start_time ASC"])
        latest: dict[str, dict[str, Any]] = {}
        for run in runs:  # oldest first: a later run on the same digest replaces an earlier one
            with tempfile.TemporaryDirectory() as tmp:
                path = self._mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=REPORT_FILE, dst_path=tmp, tracking_uri=self.tracking_uri)
                report = json.loads(Path(path).read_text())
            for digest, figures in dataset_metrics(report).items():
                latest[digest] = {**figures, "run_id": run.info.run_id}
        return latest

    # -- aliases ---------------------------------------------------------------------------------------------
    def promote(self, ref: ModelRef, alias: str, force: bool = False, reason: str = "",
                recall_tolerance: float = RECALL_TOLERANCE, leak_tolerance: float = LEAK_TOLERANCE) -> GateDecision:
        """Move `alias` to the version `ref` names if the gate allows it (or forced, with a reason)."""
        if force and not reason.strip():
            raise RegistryError("a forced promotion needs --reason: it is recorded with the promotion")
        candidate = self.info(ref)
        holder_version = self.aliases(candidate.name).get(alias)
        if holder_version == candidate.version:
            return GateDecision(True, [f"{alias} already is {candidate.name}/{candidate.version}"])
        ours = self.evaluations(ModelRef(candidate.name, version=candidate.version))
        if holder_version is None:
            decision = GateDecision(bool(ours), [f"first holder of {alias}" if ours else
                                                 "no evaluation of this version: run `imask model eval` first"])
        else:
            theirs = self.evaluations(ModelRef(candidate.name, version=holder_version))
            decision = compare(theirs, ours, recall_tolerance, leak_tolerance)
        if not decision.allowed and force:
            decision.reasons.append(f"FORCED: {reason}")
        if decision.allowed or force:
            self.client.set_registered_model_alias(candidate.name, alias, candidate.version)
        self._run(PROMOTION_EXPERIMENT, f"{alias} -> {candidate.name}/{candidate.version}",
                  params={"alias": alias, "from_version": holder_version or "", "to_version": candidate.version,
                          "forced": str(force and not decision.allowed), "recall_tolerance": recall_tolerance,
                          "leak_tolerance": leak_tolerance},
                  tags={TAG_MODEL: candidate.name, TAG_VERSION: candidate.version,
                        "imask.gate_allowed": str(decision.allowed),
                        "imask.moved": str(decision.allowed or force), "imask.reason": reason[:4000],
                        "imask.gate_reasons": "; ".join(decision.reasons)[:4000]})
        return decision

    def rollback(self, name: str, alias: str, reason: str) -> VersionInfo:
        """Point `alias` back at the version it held before its last move (from the promotion audit)."""
        experiment = self.client.get_experiment_by_name(PROMOTION_EXPERIMENT)
        runs = [] if experiment is None else self.client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{TAG_MODEL}` = '{name}' and params.alias = '{alias}' "
            "and tags.`imask.moved` = 'True'", order_by=["attributes.start_time DESC"], max_results=1)
        if not runs or not runs[0].data.params.get("from_version"):
            raise RegistryError(f"no earlier holder of {name}@{alias} to roll back to")
        previous = runs[0].data.params["from_version"]
        current = self.aliases(name).get(alias, "")
        self.client.set_registered_model_alias(name, alias, previous)
        self._run(PROMOTION_EXPERIMENT, f"rollback {alias} -> {name}/{previous}",
                  params={"alias": alias, "from_version": current, "to_version": previous, "forced": "rollback"},
                  tags={TAG_MODEL: name, TAG_VERSION: previous, "imask.moved": "True", "imask.reason": reason[:4000],
                        "imask.gate_reasons": "rollback (no gate: back to the previous holder)"})
        return self.info(ModelRef(name, version=previous))

    # -- plumbing --------------------------------------------------------------------------------------------
    def _run(self, experiment: str, run_name: str, params: dict[str, Any] | None = None,
             metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None,
             artifacts: Path | None = None, artifact_path: str | None = None,
             datasets: list[tuple[str, str, str]] | None = None) -> str:
        mlflow = self._mlflow
        try:
            mlflow.set_tracking_uri(self.tracking_uri)
            experiment_id = mlflow.set_experiment(experiment).experiment_id
            with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
                if params:
                    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
                if metrics:
                    mlflow.log_metrics(metrics)
                if tags:
                    mlflow.set_tags(tags)
                for name, digest, source in datasets or []:
                    mlflow.log_input(_dataset(name, digest, source), context="evaluation")
                if artifacts is not None:
                    mlflow.log_artifacts(str(artifacts), artifact_path=artifact_path)
                return str(run.info.run_id)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"model registry at {self.tracking_uri}: {exc}") from None


def _dataset(name: str, digest: str, source: str) -> Any:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    path = Path(source)
    with warnings.catch_warnings():  # a file:// URI matches two equivalent local source types; either is right
        warnings.simplefilter("ignore", UserWarning)
        origin = (resolve_dataset_source(path.resolve().as_uri()) if path.exists()
                  else CodeDatasetSource(tags={"source": source}))
    return MetaDataset(source=origin, name=name, digest=digest.removeprefix("sha256:")[:36])  # type: ignore[abstract]


def _flat(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
