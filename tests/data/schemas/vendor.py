"""Re-create the vendored schemas in this folder from two PyPI wheels (run by hand, never by the tests).

    pip download --no-deps check-jsonschema==0.39.0 kubernetes-validate==1.37.0 -d /tmp/wheels
    python tests/data/schemas/vendor.py /tmp/wheels

- ``compose-spec.json``: the Compose Specification's schema as check-jsonschema vendors it.
- ``kubernetes-1.37-strict.json``: kubernetes-validate's strict (no unknown fields) schemas for
  the kinds deploy/k8s uses, with only the definitions they reach, so the file stays small.
  Each kind is under ``kinds["<apiVersion> <kind>"]``; references point at ``#/$defs/...``.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
K8S_DIR = "kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict/"
KINDS = {
    "v1 ConfigMap": "configmap-v1.json",
    "v1 Service": "service-v1.json",
    "v1 PersistentVolumeClaim": "persistentvolumeclaim-v1.json",
    "apps/v1 Deployment": "deployment-apps-v1.json",
    "apps/v1 StatefulSet": "statefulset-apps-v1.json",
    "batch/v1 Job": "job-batch-v1.json",
}
EXTERNAL = "/api/_definitions.json#/$defs/"  # how a kind's file refers to a definition
INTERNAL = "#/$defs/"  # how a definition refers to another


def _wheel(folder: Path, name: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(next(folder.glob(f"{name}-*.whl")))


def _refs(node: Any, found: set[str]) -> Any:
    """Rewrite references to the bundle's own ``$defs`` and collect the names they reach."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith((EXTERNAL, INTERNAL)):
                name = value.split("#/$defs/", 1)[1]
                found.add(name)
                out[key] = "#/$defs/" + name
            else:
                out[key] = _refs(value, found)
        return out
    if isinstance(node, list):
        return [_refs(item, found) for item in node]
    return node


def main(folder: Path) -> None:
    with _wheel(folder, "check_jsonschema") as wheel:
        compose = wheel.read("check_jsonschema/builtin_schemas/vendor/compose-spec.json")
    (HERE / "compose-spec.json").write_bytes(compose)
    with _wheel(folder, "kubernetes_validate") as wheel:
        definitions = json.loads(wheel.read(K8S_DIR + "_definitions.json"))["$defs"]
        pending: set[str] = set()
        kinds = {kind: _refs(json.loads(wheel.read(K8S_DIR + name)), pending) for kind, name in KINDS.items()}
    kept: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        if name not in kept:
            kept[name] = _refs(definitions[name], pending)
    bundle = {"source": "kubernetes-validate 1.37.0, v1.37.0-local-strict", "kinds": kinds, "$defs": kept}
    (HERE / "kubernetes-1.37-strict.json").write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
