"""Turn KServe's InferenceService CRD into the JSON Schema that CI checks deploy/kserve/*.yaml against.

    git clone --depth 1 --branch v0.20.0 https://github.com/kserve/kserve
    python deploy/kserve/make_schema.py kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml \
        --release v0.20.0 --commit "$(git -C kserve rev-parse HEAD)" > deploy/kserve/inferenceservice.schema.json

It takes the CRD's v1beta1 ``openAPIV3Schema`` as it is (types, enums, patterns, ranges, required fields) and
changes three things: every object that lists its properties refuses unknown ones (``additionalProperties:
false``, unless the CRD keeps unknown fields), as ``kubectl apply`` does with strict field validation instead of
silently dropping a misspelt field; ``apiVersion`` and ``kind`` are pinned, so the schema passes no other kind of
manifest; and sub-schemas repeated verbatim (the container, probe and volume schemas appear dozens of times) are
stored once under ``definitions`` and referred to, which makes the file a fraction of the size. What a JSON
Schema validator cannot check is not checked: the CRD's CEL rules (``x-kubernetes-validations``), list-map keys,
``metadata`` (the API server validates it) and the KServe webhook's own rules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from typing import Any

import yaml

GROUP_VERSION = "serving.kserve.io/v1beta1"
SOURCE_PATH = "config/crd/full/serving.kserve.io_inferenceservices.yaml"
MIN_SHARED_CHARS = 400  # smaller repeated sub-schemas stay inline: a reference would save little and read worse


def _canonical(node: Any) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def strict(node: Any) -> Any:
    """Refuse unknown fields wherever the CRD lists the known ones (and does not ask to keep the rest)."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _count(node: Any, counts: Counter[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _count(item, counts)
    elif isinstance(node, dict):
        counts[_canonical(node)] += 1
        for value in node.values():
            _count(value, counts)


class _Sharer:
    """Replaces each sub-schema that occurs more than once by a ``$ref`` to one copy under ``definitions``."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.counts: Counter[str] = Counter()
        _count(root, self.counts)
        self.definitions: dict[str, Any] = {}
        self.names: dict[str, str] = {}

    def share(self, node: Any, name: str) -> Any:
        if isinstance(node, list):
            return [self.share(item, name) for item in node]
        if not isinstance(node, dict):
            return node
        key = _canonical(node)
        if self.counts[key] > 1 and len(key) >= MIN_SHARED_CHARS:
            if key not in self.names:
                self.names[key] = self._fresh(name, key)
                self.definitions[self.names[key]] = self.children(node, name)
            return {"$ref": f"#/definitions/{self.names[key]}"}
        return self.children(node, name)

    def children(self, node: dict[str, Any], name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {prop: self.share(schema, prop) for prop, schema in value.items()}
            else:  # a list's items or a map's values are named after the field that holds them
                out[key] = self.share(
                    value, {"items": f"{name}Item", "additionalProperties": f"{name}Value"}.get(key, key)
                )
        return out

    def _fresh(self, name: str, key: str) -> str:
        if name not in self.definitions and name not in self.names.values():
            return name
        return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"  # the same shape name, another schema


def schema_from_crd(crd: dict[str, Any], release: str, commit: str) -> dict[str, Any]:
    versions = [v for v in crd.get("spec", {}).get("versions", []) if v.get("name") == GROUP_VERSION.split("/")[1]]
    if crd.get("kind") != "CustomResourceDefinition" or not versions:
        raise SystemExit(f"make_schema: not a CustomResourceDefinition with a {GROUP_VERSION} version")
    root = strict(versions[0]["schema"]["openAPIV3Schema"])
    root["properties"]["apiVersion"] = {"const": GROUP_VERSION}
    root["properties"]["kind"] = {"const": "InferenceService"}
    root["required"] = ["apiVersion", "kind", "metadata", "spec"]
    sharer = _Sharer(root)
    body = sharer.children(root, "InferenceService")
    tool = crd["metadata"].get("annotations", {}).get("controller-gen.kubebuilder.io/version", "unknown")
    comment = (
        f"The v1beta1 openAPIV3Schema of the CustomResourceDefinition {crd['metadata']['name']} from KServe "
        f"{release} (github.com/kserve/kserve, commit {commit}, {SOURCE_PATH}, generated by controller-gen {tool}); "
        "KServe is licensed under the Apache License 2.0. Converted by deploy/kserve/make_schema.py: unknown "
        "fields refused, apiVersion and kind pinned, repeated sub-schemas shared under definitions."
    )
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": comment,
        "title": f"InferenceService ({GROUP_VERSION})",
        **body,
        "definitions": sharer.definitions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("crd", help=f"KServe's {SOURCE_PATH}")
    parser.add_argument("--release", required=True, help="the KServe release the CRD is from, e.g. v0.20.0")
    parser.add_argument("--commit", required=True, help="the commit of that release")
    args = parser.parse_args()
    with open(args.crd, encoding="utf-8") as handle:
        crd = yaml.safe_load(handle)
    json.dump(schema_from_crd(crd, args.release, args.commit), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
