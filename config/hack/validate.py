#!/usr/bin/env python3
"""Validate rendered manifests offline.

Kubernetes kinds are checked with kubernetes-validate (strict: unknown fields are errors) against
every --kubernetes-version given. NautilusMaster objects are checked against the CRD's own
openAPIV3Schema, the way the API server does for the parts a JSON Schema validator can express:
defaults first, then types, enums, patterns, bounds, required fields, and unknown fields refused
(kubectl's default strict field validation). CEL rules (x-kubernetes-validations) are not
evaluated here; crds/tests/schema.rs runs them with kube's CEL engine. Argo CD Applications have no
schema here and get a structural check.

Usage: validate.py --crd CRD.yaml [--kubernetes-version V]... [--status-only FILE]... FILE...
"""

import argparse
import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

GROUP_VERSION = "nautilus.k3s-daas.io/v1alpha1"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_documents(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def openapi_to_jsonschema(node, root=True):
    """Rewrite a structural OpenAPI v3 schema into JSON Schema (draft 4) terms."""
    out = {}
    for key, value in node.items():
        if key in ("nullable", "x-kubernetes-validations"):
            continue
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub, root=False) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = openapi_to_jsonschema(value, root=False)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [openapi_to_jsonschema(sub, root=False) for sub in value]
        else:
            out[key] = value  # data (default, enum, required, ...) or keywords jsonschema ignores
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = out["enum"] + [None]
    # The API server prunes unknown fields and kubectl (strict field validation) refuses them.
    if ("properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if root:
        out.setdefault("properties", {}).update({
            "apiVersion": {"enum": [GROUP_VERSION]},
            "kind": {"enum": ["NautilusMaster"]},
            "metadata": {"type": "object", "required": ["name"]},
        })
        out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return out


def apply_defaults(schema, value):
    """Fill absent fields from `default`, outside in, as the API server does before validating."""
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                apply_defaults(prop, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in schema.get("properties", {}):
                    apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def crd_validator(crd_path):
    crds = [d for d in load_documents(crd_path) if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise SystemExit(f"{crd_path}: expected one CustomResourceDefinition, found {len(crds)}")
    versions = [v for v in crds[0]["spec"]["versions"] if v["name"] == GROUP_VERSION.split("/")[1]]
    schema = openapi_to_jsonschema(versions[0]["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return schema, jsonschema.Draft4Validator(schema)


def where(error):
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def check_nautilus(doc, schema, validator, status_only):
    if status_only:
        sub = schema["properties"]["status"]
        errors = [f"status.{where(e)}: {e.message}" if e.absolute_path else f"status: {e.message}"
                  for e in jsonschema.Draft4Validator(sub).iter_errors(doc.get("status"))]
        if not isinstance(doc.get("metadata", {}).get("generation", 0), int):
            errors.append("metadata.generation: not an integer")
        return errors
    doc = copy.deepcopy(doc)
    apply_defaults(schema, doc)
    return [f"{where(e)}: {e.message}" for e in validator.iter_errors(doc)]


def check_application(doc):
    spec = doc.get("spec", {})
    source, dest = spec.get("source", {}), spec.get("destination", {})
    errors = []
    for field, value in (("spec.project", spec.get("project")),
                         ("spec.source.repoURL", source.get("repoURL")),
                         ("spec.source.targetRevision", source.get("targetRevision")),
                         ("spec.source.path", source.get("path"))):
        if not isinstance(value, str) or not value:
            errors.append(f"{field}: missing")
    if not (dest.get("server") or dest.get("name")):
        errors.append("spec.destination: needs server or name")
    path = source.get("path")
    if isinstance(path, str) and not (REPO_ROOT / path / "kustomization.yaml").is_file():
        errors.append(f"spec.source.path: {path} has no kustomization.yaml in this repository")
    return errors


def check_kubernetes(doc, versions):
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where(e)}: {e.message} (Kubernetes {version})")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(e.message)
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd", required=True)
    parser.add_argument("--kubernetes-version", action="append", dest="versions", default=[])
    parser.add_argument("--status-only", action="append", default=[],
                        help="NautilusMaster files (Argo CD testdata) whose status alone is checked")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    versions = args.versions or [kubernetes_validate.utils.latest_version()]
    schema, validator = crd_validator(args.crd)

    checked = failed = 0
    for path in args.files + args.status_only:
        status_only = path in args.status_only
        documents = load_documents(path)
        if not documents:
            print(f"FAIL {path}: no objects")
            failed += 1
        for doc in documents:
            api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
            if api_version == GROUP_VERSION and kind == "NautilusMaster":
                errors = check_nautilus(doc, schema, validator, status_only)
            elif status_only:
                errors = [f"expected a {GROUP_VERSION} NautilusMaster, found {api_version} {kind}"]
            elif api_version.startswith("argoproj.io/") and kind == "Application":
                errors = check_application(doc)
            else:
                errors = check_kubernetes(doc, versions)
            checked += 1
            for error in errors:
                print(f"FAIL {path}: {name}: {error}")
            failed += bool(errors)
    what = f"Kubernetes {', '.join(versions)} schemas and the NautilusMaster CRD schema"
    print(f"validate: {checked - failed} objects valid, {failed} invalid ({what})")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
