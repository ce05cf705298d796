"""What every manifest shares: metadata with the owner reference, and the pod-template hash."""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fleetlm.operator.naming import SPEC_HASH_ANNOTATION
from fleetlm.operator.spec import InferenceModel


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller reference to the InferenceModel `owner` (its body): Kubernetes' garbage
    collector deletes the object with it, and foreground deletion waits for it."""
    metadata = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    model: InferenceModel, owner: Mapping[str, Any], name: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def spec_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-like object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_spec_hash(template: dict[str, Any]) -> dict[str, Any]:
    """`template` (a pod template) annotated with the hash of itself, so any change to what
    the pods run changes the template and rolls them."""
    annotations = {**template["metadata"].get("annotations", {})}
    annotations[SPEC_HASH_ANNOTATION] = spec_hash(template)
    return {**template, "metadata": {**template["metadata"], "annotations": annotations}}
