"""What the API server does with a custom resource on create, without a cluster.

`admit(crd, obj)` goes through the steps of kube-apiserver's handling of a CustomResource:
unknown fields are pruned (and reported, as `kubectl apply --validate=strict` does), null
fields that are not nullable are dropped, `default`s fill missing properties (recursively, also
inside objects just defaulted to `{}`), the openAPIV3Schema's value validations run (as JSON
Schema), then every `x-kubernetes-validations` CEL rule (with cel-python) on each node present,
`self` bound to the defaulted node.

NOTE: as in the API server, type and enum errors block the CEL rules (they would see values of
the wrong type); the result then carries `CEL_SKIPPED`. Transition rules (`oldSelf`) and
`messageExpression` are not supported: they are update-only or unused here.
"""

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "inferencemodel.yaml"

CEL_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
# Schema keywords the API server checks on values; the others are structure or x-kubernetes-*.
_VALUE_KEYWORDS = (
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "format",
)
# Errors of these JSON Schema keywords block the CEL rules (type invalid / not supported).
_BLOCKING = ("type", "enum")
# ObjectMeta and the type fields are the API server's own: never pruned by the schema.
_ROOT_FIELDS = {"apiVersion", "kind", "metadata"}

_cel = celpy.Environment()


def load_crd(path: Path = CRD_PATH) -> dict:
    return yaml.safe_load(path.read_text())


def version_schema(crd: dict, version: str) -> dict:
    """The openAPIV3Schema of `version` (e.g. "v1alpha1")."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"no version {version!r} in {crd['metadata']['name']}")


def admit(crd: dict, obj: dict) -> tuple[dict, list[str]]:
    """The object as the API server would store it, and the reasons it would refuse it
    (empty: accepted)."""
    obj = copy.deepcopy(obj)
    errors = _check_type(crd, obj)
    if errors:
        return obj, errors
    schema = version_schema(crd, obj["apiVersion"].partition("/")[2])
    errors = _prune(schema, obj, "")
    apply_defaults(schema, obj)
    schema_errors = sorted(_validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    errors += [f"{_path(e.absolute_path) or '<root>'}: {e.message}" for e in schema_errors]
    if any(e.validator in _BLOCKING for e in schema_errors):
        return obj, [*errors, CEL_SKIPPED]
    return obj, errors + _cel_errors(schema, obj, "")


def _check_type(crd: dict, obj: dict) -> list[str]:
    spec = crd["spec"]
    served = {f"{spec['group']}/{v['name']}" for v in spec["versions"] if v["served"]}
    if obj.get("apiVersion") not in served or obj.get("kind") != spec["names"]["kind"]:
        return [f"no served kind {spec['names']['kind']} in {obj.get('apiVersion')!r}"]
    return []


def _prune(schema: dict, value: Any, path: str) -> list[str]:
    """Drop the fields the schema does not know; one error per field dropped."""
    if path == "metadata":
        return []
    errors = []
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        known = set(properties) | (_ROOT_FIELDS if not path else set())
        for key in list(value):
            child = _join(path, key)
            if key in properties:
                errors += _prune(properties[key], value[key], child)
            elif isinstance(extra, dict):
                errors += _prune(extra, value[key], child)
            elif key not in known and not _preserves_unknown(schema):
                errors.append(f'unknown field "{child}"')
                del value[key]
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _prune(schema["items"], item, f"{path}[{i}]")
    return errors


def _preserves_unknown(schema: dict) -> bool:
    return schema.get("x-kubernetes-preserve-unknown-fields", False) or (
        schema.get("additionalProperties") is True
    )


def apply_defaults(schema: dict, value: Any) -> None:
    """Fill missing properties from `default`, in place, the way the API server does."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key in value and value[key] is None and not sub.get("nullable", False):
                del value[key]
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                apply_defaults(sub, item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(schema["items"], item)


def to_json_schema(node: dict) -> dict:
    """An openAPIV3Schema node as JSON Schema (2020-12), value validations only."""
    out = {key: node[key] for key in _VALUE_KEYWORDS if key in node}
    nullable = node.get("nullable", False)
    if "type" in node:
        out["type"] = [node["type"], "null"] if nullable else node["type"]
    if nullable and "enum" in node:
        out["enum"] = [*node["enum"], None]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_json_schema(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"])
    return out


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    cls = jsonschema.Draft202012Validator
    return cls(to_json_schema(schema), format_checker=cls.FORMAT_CHECKER)


def _cel_errors(schema: dict, value: Any, path: str) -> list[str]:
    """Evaluate the rules of every node present, children after their parent."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        where = _join(path, rule.get("fieldPath", "").lstrip(".")) or "<root>"
        try:
            holds = compile_rule(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:  # celpy raises CELEvalError, and TypeError on bad operands
            errors.append(f"{where}: rule {rule['rule']!r} could not be evaluated: {exc}")
            continue
        if not isinstance(holds, celpy.celtypes.BoolType):
            errors.append(f"{where}: rule {rule['rule']!r} gave {holds!r}, not a bool")
        elif not holds:
            errors.append(f"{where}: {rule['message']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                errors += _cel_errors(sub, item, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


@functools.cache
def compile_rule(rule: str) -> celpy.Runner:
    """A CEL rule, parsed once; raises celpy.CELParseError if celpy cannot parse it."""
    return _cel.program(_cel.compile(rule))


def iter_rules(schema: dict, path: str = "") -> list[tuple[str, dict]]:
    """Every `x-kubernetes-validations` entry of the schema, with the path of its node."""
    found = [(path or "<root>", rule) for rule in schema.get("x-kubernetes-validations", [])]
    for key, sub in schema.get("properties", {}).items():
        found += iter_rules(sub, _join(path, key))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += iter_rules(schema[key], f"{path}[*]")
    return found


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


def _path(parts) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out
