"""{{name}}: a Mediary channel plugin (world `{{world}}` of `wit/plugin.wit`).

Refuses requests without the `requireHeader` header (default `x-request-id`) with 400, sends
requests whose path starts with a `routes` prefix to that route (the longest prefix wins), and
lets every other request follow the channel's own routes.

`mediary plugin build` generates the `wit_world` bindings package while building the component;
`.venv/bin/componentize-py -d wit -w {{world}} bindings .` writes it here for your editor.
"""

import json

from wit_world import exports
from wit_world.imports import config, log, types


def setting(key, fallback):
    """A setting's JSON value, or `fallback` when it is not set."""
    text = config.get(key)
    return fallback if text is None else json.loads(text)


def decide(path, header_names):
    required = str(setting("requireHeader", "x-request-id")).lower()
    if not any(name.lower() == required for name in header_names):
        return types.Action_Reject(
            types.Rejection(status=400, reason=f"the request has no {required} header")
        )
    routes = setting("routes", {})
    best = None
    for prefix, route in routes.items():
        if isinstance(route, str) and path.startswith(prefix):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, route)
    target = types.Target_ChannelRoutes() if best is None else types.Target_Route(best[1])
    return types.Action_Forward(types.Forward(target=target, rewrite=None))


def describe(action):
    if isinstance(action, types.Action_Forward):
        target = action.value.target
        return target.value if isinstance(target, types.Target_Route) else "channel-routes"
    kind = "reject" if isinstance(action, types.Action_Reject) else "respond"
    return f"{kind} {action.value.status}"


class Router(exports.Router):
    def on_request(self, request: types.Request) -> types.Action:
        action = decide(request.path, [name for name, _ in request.headers])
        log.log(log.Level.INFO, "Decided.", [("path", request.path), ("decision", describe(action))])
        return action
{{python_transformer}}
