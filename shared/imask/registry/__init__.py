"""The model registry on MLflow: variants as registered model versions, evaluations as runs, gated aliases."""

from imask.registry.refs import ModelRef, RegistryError
from imask.registry.spec import variant_from_spec, variant_to_spec

__all__ = ["ModelRef", "RegistryError", "variant_from_spec", "variant_to_spec"]
