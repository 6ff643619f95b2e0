"""Check the provisioned Grafana dashboards offline.

Each dashboard JSON is parsed with grafana-foundation-sdk's typed models (the generated Grafana schema, with
the panel and Prometheus query plugins registered) and serialised again. The SDK silently drops keys it does
not know, so any key or value that does not survive the round trip is a misspelling or a wrong type; such a
dashboard fails. Enum-typed fields (colour modes, legend placement, ...) must hold one of the schema's values.
On top of that: panel ids are unique, panel types are known plugins, every query has a
refId and an expression, and every `$variable` used is defined.

With --emit-rules FILE the PromQL of every panel is written as recording rules (Grafana's `$__...` macros and
the template variables replaced by plain values) so that `promtool check rules FILE` checks its syntax.

    python deploy/grafana/check_dashboard.py deploy/grafana/dashboards/*.json [--emit-rules /tmp/rules.yml]
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.cog.runtime import panelcfg_config
from grafana_foundation_sdk.models.dashboard import Dashboard, FieldConfig

# Grafana's built-in variables, replaced by valid PromQL for the syntax check.
MACROS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}
BUILTIN_VARIABLES = {name.lstrip("$") for name in MACROS} | {"__all", "__name", "__range_s", "__interval_ms"}
VARIABLE_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def lost_in_round_trip(original: Any, parsed: Any, path: str = "") -> list[str]:
    """Paths (JSON-pointer style) whose key or value in `original` did not come back in `parsed`."""
    problems: list[str] = []
    if isinstance(original, dict):
        if not isinstance(parsed, dict):
            return [f"{path or '/'}: object became {type(parsed).__name__}"]
        for key, value in original.items():
            child = f"{path}/{key}"
            if key not in parsed:
                problems.append(f"{child}: unknown key (dropped by the schema)")
            else:
                problems.extend(lost_in_round_trip(value, parsed[key], child))
    elif isinstance(original, list):
        if not isinstance(parsed, list) or len(parsed) != len(original):
            return [f"{path}: list changed in the round trip"]
        for index, (a, b) in enumerate(zip(original, parsed, strict=True)):
            problems.extend(lost_in_round_trip(a, b, f"{path}/{index}"))
    elif original != parsed:
        problems.append(f"{path}: {original!r} came back as {parsed!r}")
    return problems


def _allowed_values(hint: Any) -> set[object] | None:
    """The values an enum- or Literal-typed field accepts, or None when the field is not such a field."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return set(typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {member.value for member in hint}
    if origin in (typing.Union, types.UnionType):
        allowed: set[object] = set()
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            values = _allowed_values(arg)
            if values is None:
                return None  # a free-form alternative (str, int, ...): anything goes
            allowed |= values
        return allowed
    return None


def bad_enum_values(obj: Any, path: str = "dashboard") -> list[str]:
    """Walk the parsed SDK objects; report enum/Literal fields holding a value the schema does not list.

    The SDK keeps such values as raw JSON strings/numbers, so a misspelled `"mode": "palette-clasic"` would
    otherwise survive the round trip.
    """
    problems: list[str] = []
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            problems.extend(bad_enum_values(item, f"{path}[{index}]"))
        return problems
    if isinstance(obj, dict):
        for key, item in obj.items():
            problems.extend(bad_enum_values(item, f"{path}.{key}"))
        return problems
    if isinstance(obj, (str, int, float, bool, enum.Enum)) or not hasattr(obj, "__dict__"):
        return problems
    hints = typing.get_type_hints(type(obj))
    for name, value in vars(obj).items():
        allowed = _allowed_values(hints.get(name))
        if value is not None and allowed is not None:
            raw = value.value if isinstance(value, enum.Enum) else value
            if raw not in allowed:
                problems.append(f"{path}.{name}: {raw!r} is not one of {sorted(map(str, allowed))}")
        problems.extend(bad_enum_values(value, f"{path}.{name}"))
    return problems


def bad_override_properties(panel: dict[str, Any]) -> list[str]:
    """Override property ids are free strings in the schema: check each names a real field-config key."""
    problems: list[str] = []
    config = panelcfg_config(panel.get("type", ""))
    overrides = panel.get("fieldConfig", {}).get("overrides", [])
    for index, override in enumerate(overrides):
        for prop in override.get("properties", []):
            prop_id, value = prop.get("id", ""), prop.get("value")
            if prop_id.startswith("custom."):
                key = prop_id.removeprefix("custom.")
                hook = config.field_config_from_json_hook if config is not None else None
                known = hook is not None and key in json.loads(json.dumps(hook({key: value}), cls=JSONEncoder))
            else:
                known = prop_id in FieldConfig.from_json({prop_id: value}).to_json()
            if not known:
                problems.append(f"fieldConfig/overrides/{index}: unknown property id {prop_id!r}")
    return problems


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside a collapsed row
    return panels


def check_dashboard(path: Path) -> tuple[list[str], list[str]]:
    """Return (problems, PromQL expressions) for one dashboard file."""
    original = json.loads(path.read_text(encoding="utf-8"))
    model = Dashboard.from_json(original)
    parsed = json.loads(json.dumps(model, cls=JSONEncoder))
    problems = lost_in_round_trip(original, parsed) + bad_enum_values(model)

    if not original.get("uid") or not original.get("title"):
        problems.append("dashboard needs a uid and a title (provisioning keys on the uid)")
    variables = {v["name"] for v in original.get("templating", {}).get("list", [])}
    exprs: list[str] = []
    seen_ids: set[int] = set()
    for panel in all_panels(original):
        where = f"panel {panel.get('id')} ({panel.get('title')!r})"
        if panel.get("id") in seen_ids:
            problems.append(f"{where}: duplicate panel id")
        seen_ids.add(panel.get("id", -1))
        if panel.get("type") != "row" and panelcfg_config(panel.get("type", "")) is None:
            problems.append(f"{where}: unknown panel type {panel.get('type')!r}")
        if "gridPos" not in panel:
            problems.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        problems.extend(f"{where}: {p}" for p in bad_override_properties(panel))
        if not panel.get("targets"):
            problems.append(f"{where}: no queries")
        for target in panel.get("targets", []):
            if not target.get("refId") or not target.get("expr", "").strip():
                problems.append(f"{where}: query without refId or expr")
            exprs.append(target.get("expr", ""))
        text = json.dumps(panel)
        for name in VARIABLE_RE.findall(text):
            if name not in variables and name not in BUILTIN_VARIABLES:
                problems.append(f"{where}: uses undefined variable ${name}")
    return problems, exprs


def as_plain_promql(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    return VARIABLE_RE.sub(".*", expr)


def write_rules(exprs: list[str], path: Path) -> None:
    rules = [{"record": f"dashboard:query_{i}", "expr": as_plain_promql(e)} for i, e in enumerate(exprs)]
    # JSON is valid YAML: no YAML library needed.
    path.write_text(json.dumps({"groups": [{"name": "dashboard-queries", "rules": rules}]}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dashboards", nargs="+", type=Path)
    parser.add_argument("--emit-rules", type=Path, help="write the panels' PromQL as a rules file for promtool")
    args = parser.parse_args(argv)

    register_default_plugins()
    failed = False
    exprs: list[str] = []
    for path in args.dashboards:
        problems, found = check_dashboard(path)
        exprs.extend(found)
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        print(f"{path}: {'FAILED' if problems else 'ok'} ({len(found)} queries)")
    if args.emit_rules is not None:
        write_rules(exprs, args.emit_rules)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
