"""A content-based FHIR router: each request goes, unchanged, to the channel route that serves its
FHIR resource type. The Python twin of plugins/rust/router: same settings, same decisions, same log
lines, same refusals (plugins/cases/router.json checks all three languages).

The resource type comes from one place, chosen by `by`:

- "path" (the default): the first path segment that starts with an ASCII capital letter;
- "header": the value of the header named by `header` (default `x-resource-type`), trimmed;
- "body": the JSON body's top-level string field named by `field` (default `resourceType`).

`routes` maps resource types to route names; a request whose type is not there (or has none) goes
to `fallback`, or, without one, is refused with 404. Each decision is logged at `debug` with the
fields `resource` and `route`. Invalid settings refuse every request with 500.
"""

import json
import dataclasses
from typing import Dict, Optional, Union

from wit_world import exports
from wit_world.imports import config, log
from wit_world.imports.types import (
    Action,
    Action_Forward,
    Action_Reject,
    Forward,
    Rejection,
    Request,
    Target_Route,
)

SOURCES = ("path", "header", "body")
# Unicode White_Space, what Rust's `str::trim` removes (`str.strip()` also takes U+001C..U+001F).
WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
KEYS = ("by", "header", "field", "routes", "fallback")


@dataclasses.dataclass
class Settings:
    """The plugin's settings (`plugin.config`)."""

    by: str = "path"
    header: str = "x-resource-type"
    field: str = "resourceType"
    routes: Dict[str, str] = dataclasses.field(default_factory=dict)
    fallback: Optional[str] = None


def _quoted(names) -> str:
    return ", ".join(f"`{name}`" for name in names)


def parse_settings(text: str) -> Settings:
    """The settings in `text`; raises ValueError naming the problem."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("invalid type: expected a JSON object")
    for key in raw:
        if key not in KEYS:
            raise ValueError(f"unknown field `{key}`, expected one of {_quoted(KEYS)}")
    settings = Settings()
    for key in ("by", "header", "field"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ValueError(f"invalid type for `{key}`: expected a string")
            setattr(settings, key, raw[key])
    if settings.by not in SOURCES:
        raise ValueError(f"unknown variant `{settings.by}`, expected one of {_quoted(SOURCES)}")
    routes = raw.get("routes", {})
    if not isinstance(routes, dict):
        raise ValueError("invalid type for `routes`: expected a map of resource type to route name")
    for resource, route in routes.items():
        if not isinstance(route, str):
            raise ValueError(f"invalid type for `routes.{resource}`: expected a string")
    settings.routes = routes
    fallback = raw.get("fallback")
    if fallback is not None and not isinstance(fallback, str):
        raise ValueError("invalid type for `fallback`: expected a string")
    settings.fallback = fallback
    return settings


# The settings, checked on the instance's first request (they never change for an instance): the
# Settings, or the error message.
_checked: Union[Settings, str, None] = None


def settings() -> Union[Settings, str]:
    global _checked
    if _checked is None:
        try:
            _checked = parse_settings(config.all())
        except ValueError as error:  # json.JSONDecodeError is a ValueError too.
            _checked = f"plugin settings are invalid: {error}"
    return _checked


def header(request: Request, name: str) -> Optional[str]:
    """The first value of header `name`, compared ignoring ASCII case."""
    wanted = name.lower()
    for key, value in request.headers:
        if key.lower() == wanted:
            return value
    return None


def resource_in_path(path: str) -> Optional[str]:
    """The first path segment that starts with an ASCII capital letter."""
    for segment in path.split("/"):
        if segment[:1].isascii() and segment[:1].isupper():
            return segment
    return None


def string_field(body: bytes, name: str) -> Optional[str]:
    """The string value of the JSON object's top-level `name`; None if the body is not a JSON object
    or the field is missing or not a string."""
    try:
        value = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are.
        return None
    if not isinstance(value, dict):
        return None
    found = value.get(name)
    return found if isinstance(found, str) else None


def resource_of(request: Request, s: Settings) -> Optional[str]:
    if s.by == "path":
        return resource_in_path(request.path)
    if s.by == "header":
        value = (header(request, s.header) or "").strip(WHITE_SPACE)
        return value or None
    return string_field(request.body, s.field)


def no_route_reason(s: Settings, resource: Optional[str]) -> str:
    if resource is not None:
        return f"No route serves FHIR resource type `{resource}`."
    if s.by == "path":
        return "No FHIR resource type found in the request path."
    if s.by == "header":
        return f"No FHIR resource type found: header `{s.header}` is missing or empty."
    return f"No FHIR resource type found: the body is not a JSON object with a string `{s.field}`."


class Router(exports.Router):
    def on_request(self, request: Request) -> Action:
        s = settings()
        if isinstance(s, str):
            log.log(log.Level.ERROR, "Invalid settings.", [("error", s)])
            return Action_Reject(Rejection(500, s))
        resource = resource_of(request, s)
        route = s.routes.get(resource) if resource is not None else None
        if route is None:
            route = s.fallback
        resource_field = resource or ""
        if route is None:
            log.log(
                log.Level.DEBUG,
                "No route for the resource type.",
                [("resource", resource_field), ("route", "")],
            )
            return Action_Reject(Rejection(404, no_route_reason(s, resource)))
        log.log(
            log.Level.DEBUG,
            "Routed by resource type.",
            [("resource", resource_field), ("route", route)],
        )
        return Action_Forward(Forward(Target_Route(route), None))
