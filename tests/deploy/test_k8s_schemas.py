"""Every object under docker/k8s validates against the Kubernetes API's own schemas (strict: an
unknown or misspelt field fails), with kubernetes-validate's copies of the schemas of a current
release. The LeaderWorkerSet is a custom resource: its two pod templates validate as strict
PodTemplateSpecs, and its own fields against the LeaderWorkerSet v1 API reference (linked below)."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from .conftest import k8s_objects

K8S_VERSION = latest_version()
OBJECTS = k8s_objects()
BUILT_IN = {key: obj for key, obj in OBJECTS.items() if not obj["apiVersion"].startswith("leader")}

# The LeaderWorkerSet v1 fields the manifest may use (https://lws.sigs.k8s.io/docs/reference/
# leaderworkerset.v1/): additionalProperties false, so a misspelt field fails as with the CRD.
_TEMPLATE = {"type": "object"}  # checked as a strict PodTemplateSpec below
LWS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "leaderworkerset.x-k8s.io/v1"},
        "kind": {"const": "LeaderWorkerSet"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["leaderWorkerTemplate"],
            "additionalProperties": False,
            "properties": {
                "replicas": {"type": "integer", "minimum": 0},
                "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
                "rolloutStrategy": {"type": "object"},
                "networkConfig": {"type": "object"},
                "leaderWorkerTemplate": {
                    "type": "object",
                    "required": ["workerTemplate"],
                    "additionalProperties": False,
                    "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "restartPolicy": {"enum": ["RecreateGroupOnPodRestart", "Default", "None"]},
                        "leaderTemplate": _TEMPLATE,
                        "workerTemplate": _TEMPLATE,
                        "subGroupPolicy": {"type": "object"},
                        "volumeClaimTemplates": {"type": "array"},
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("key", sorted(BUILT_IN))
def test_manifest_object_is_valid_for_the_kubernetes_api(key: str) -> None:
    kubernetes_validate.validate(BUILT_IN[key], K8S_VERSION, strict=True)


def _pod_template(template: dict[str, Any]) -> dict[str, Any]:
    """A PodTemplate object around `template` (the schema the API checks it with)."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "lws-template"},
        "template": template,
    }


def test_leaderworkerset_is_valid() -> None:
    (lws,) = [o for o in OBJECTS.values() if o["kind"] == "LeaderWorkerSet"]
    jsonschema.validate(lws, LWS_SCHEMA)
    templates = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        kubernetes_validate.validate(_pod_template(templates[role]), K8S_VERSION, strict=True)


def test_a_misspelt_field_fails_validation() -> None:
    """The checks above can fail: the same objects with one wrong field name are refused."""
    deployment = dict(OBJECTS["Deployment/kimi-vl"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    (lws,) = [o for o in OBJECTS.values() if o["kind"] == "LeaderWorkerSet"]
    bad = {**lws, "spec": {**lws["spec"], "replica": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, LWS_SCHEMA)
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    container = {**worker["spec"]["containers"][0], "imagePullPolicyy": "Always"}
    broken = {**worker, "spec": {**worker["spec"], "containers": [container]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(_pod_template(broken), K8S_VERSION, strict=True)
