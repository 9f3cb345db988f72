// A content-based FHIR router: each request goes, unchanged, to the channel route that serves its
// FHIR resource type. The JavaScript twin of plugins/rust/router: same settings, same decisions,
// same log lines, same refusals (plugins/cases/router.json checks all three languages).
//
// The resource type comes from one place, chosen by `by`:
//
// - "path" (the default): the first path segment that starts with an ASCII capital letter;
// - "header": the value of the header named by `header` (default `x-resource-type`), trimmed;
// - "body": the JSON body's top-level string field named by `field` (default `resourceType`).
//
// `routes` maps resource types to route names; a request whose type is not there (or has none)
// goes to `fallback`, or, without one, is refused with 404. Each decision is logged at `debug`
// with the fields `resource` and `route`. Invalid settings refuse every request with 500.

import { log } from 'mediary:plugin/log@0.1.0';
import { all as allSettings } from 'mediary:plugin/config@0.1.0';

const SOURCES = ['path', 'header', 'body'];
const KEYS = ['by', 'header', 'field', 'routes', 'fallback'];
// Rust's `str::trim`: Unicode White_Space at both ends (JavaScript's `trim` differs: it takes
// U+FEFF and leaves U+0085).
const WHITE_SPACE = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const EDGES = new RegExp(`^${WHITE_SPACE}+|${WHITE_SPACE}+$`, 'g');
const trim = (text) => text.replace(EDGES, '');

// The settings, checked on the instance's first request (they never change for an instance):
// `{ ok: settings }` or `{ error: message }`.
let checked;

function settings() {
  if (checked === undefined) {
    try {
      checked = { ok: parseSettings(allSettings()) };
    } catch (error) {
      checked = { error: `plugin settings are invalid: ${error.message}` };
    }
  }
  return checked;
}

function parseSettings(text) {
  const raw = JSON.parse(text);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new Error('invalid type: expected a JSON object');
  }
  for (const key of Object.keys(raw)) {
    if (!KEYS.includes(key)) {
      throw new Error(`unknown field \`${key}\`, expected one of ${KEYS.map((k) => `\`${k}\``).join(', ')}`);
    }
  }
  const text_ = (key, fallback) => {
    const value = raw[key];
    if (value === undefined) return fallback;
    if (typeof value !== 'string') throw new Error(`invalid type for \`${key}\`: expected a string`);
    return value;
  };
  const by = text_('by', 'path');
  if (!SOURCES.includes(by)) {
    throw new Error(`unknown variant \`${by}\`, expected one of ${SOURCES.map((s) => `\`${s}\``).join(', ')}`);
  }
  const routes = raw.routes === undefined ? {} : raw.routes;
  if (routes === null || typeof routes !== 'object' || Array.isArray(routes)) {
    throw new Error('invalid type for `routes`: expected a map of resource type to route name');
  }
  for (const [type, route] of Object.entries(routes)) {
    if (typeof route !== 'string') {
      throw new Error(`invalid type for \`routes.${type}\`: expected a string`);
    }
  }
  const fallback = raw.fallback === null ? undefined : text_('fallback', undefined);
  return {
    by,
    header: text_('header', 'x-resource-type'),
    field: text_('field', 'resourceType'),
    routes: new Map(Object.entries(routes)),
    fallback,
  };
}

// The first value of header `name`, compared ignoring ASCII case.
function header(request, name) {
  const wanted = name.toLowerCase();
  const found = request.headers.find(([key]) => key.toLowerCase() === wanted);
  return found === undefined ? undefined : found[1];
}

// The first path segment that starts with an ASCII capital letter.
function resourceInPath(path) {
  return path.split('/').find((segment) => /^[A-Z]/.test(segment));
}

// The string value of the JSON object's top-level `field`; undefined if the body is not a JSON
// object or the field is missing or not a string.
function stringField(body, field) {
  let value;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const found = Object.hasOwn(value, field) ? value[field] : undefined;
  return typeof found === 'string' ? found : undefined;
}

function resourceOf(request, s) {
  switch (s.by) {
    case 'path':
      return resourceInPath(request.path);
    case 'header': {
      const value = trim(header(request, s.header) ?? '');
      return value ? value : undefined;
    }
    default:
      return stringField(request.body, s.field);
  }
}

function noRouteReason(s, resource) {
  if (resource !== undefined) return `No route serves FHIR resource type \`${resource}\`.`;
  switch (s.by) {
    case 'path':
      return 'No FHIR resource type found in the request path.';
    case 'header':
      return `No FHIR resource type found: header \`${s.header}\` is missing or empty.`;
    default:
      return `No FHIR resource type found: the body is not a JSON object with a string \`${s.field}\`.`;
  }
}

const reject = (status, reason) => ({ tag: 'reject', val: { status, reason } });

export const router = {
  onRequest(request) {
    const current = settings();
    if (current.error !== undefined) {
      log('error', 'Invalid settings.', [['error', current.error]]);
      return reject(500, current.error);
    }
    const s = current.ok;
    const resource = resourceOf(request, s);
    const route = (resource !== undefined ? s.routes.get(resource) : undefined) ?? s.fallback;
    const resourceField = resource ?? '';
    if (route === undefined) {
      log('debug', 'No route for the resource type.', [['resource', resourceField], ['route', '']]);
      return reject(404, noRouteReason(s, resource));
    }
    log('debug', 'Routed by resource type.', [['resource', resourceField], ['route', route]]);
    return { tag: 'forward', val: { target: { tag: 'route', val: route }, rewrite: undefined } };
  },
};
