// {{name}}: a Mediary channel plugin (world `{{world}}` of `wit/plugin.wit`).
//
// Refuses requests without the `requireHeader` header (default `x-request-id`) with 400, sends
// requests whose path starts with a `routes` prefix to that route (the longest prefix wins), and
// lets every other request follow the channel's own routes.

import { log } from 'mediary:plugin/log@0.1.0';
import { get } from 'mediary:plugin/config@0.1.0';

// A setting's JSON value, or `fallback` when it is not set.
function setting(key, fallback) {
  const text = get(key);
  return text === undefined || text === null ? fallback : JSON.parse(text);
}

function decide(path, headerNames) {
  const required = String(setting('requireHeader', 'x-request-id')).toLowerCase();
  if (!headerNames.some((name) => name.toLowerCase() === required)) {
    return { tag: 'reject', val: { status: 400, reason: `the request has no ${required} header` } };
  }
  const routes = setting('routes', {});
  let best;
  for (const [prefix, route] of Object.entries(routes)) {
    if (typeof route === 'string' && path.startsWith(prefix) && (best === undefined || prefix.length > best[0].length)) {
      best = [prefix, route];
    }
  }
  const target = best === undefined ? { tag: 'channel-routes' } : { tag: 'route', val: best[1] };
  return { tag: 'forward', val: { target, rewrite: undefined } };
}

function describe(action) {
  if (action.tag === 'forward') {
    return action.val.target.tag === 'route' ? action.val.target.val : 'channel-routes';
  }
  return `${action.tag} ${action.val.status}`;
}

export const router = {
  onRequest(request) {
    const action = decide(request.path, request.headers.map(([name]) => name));
    log('info', 'Decided.', [['path', request.path], ['decision', describe(action)]]);
    return action;
  },
};
{{js_transformer}}
