// Lab results as CSV in, FHIR out: the JavaScript twin of plugins/rust/lab-csv (same settings, same
// Bundle, same CSV answer, same refusals and log line; plugins/cases/lab-csv.json checks them).
//
// Requests: a `POST` whose `content-type` is `text/csv` or `application/csv` (or that has none) is
// read as CSV with a header row naming the columns `patient_id`, `code`, `display`, `value`, `unit`
// and `effective`, in any order. Each row becomes an `Observation` in one FHIR `transaction`
// Bundle, forwarded to `route` (default: the channel's routes) as `POST <path>` with an empty
// query. A malformed upload is refused with 400 naming the line and column. Other requests pass.
//
// Responses: when the upstream answers an upload with 2xx and a `transaction-response` Bundle, the
// client gets CSV instead (`row,status,location`, rows numbered from 1). Anything else passes.
//
// Settings (all optional): `codeSystem` (default `http://loinc.org`), `route` (default: the
// channel's routes), `path` (default `/fhir`).

import { log } from 'mediary:plugin/log@0.1.0';
import { all as allSettings } from 'mediary:plugin/config@0.1.0';

const FHIR_JSON = 'application/fhir+json';
const UCUM = 'http://unitsofmeasure.org';
const KEYS = ['codeSystem', 'route', 'path'];

// ----- settings -----

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
  for (const key of KEYS) {
    const value = raw[key];
    if (value !== undefined && value !== null && typeof value !== 'string') {
      throw new Error(`invalid type for \`${key}\`: expected a string`);
    }
  }
  return {
    // The `system` of every Observation's code.
    codeSystem: raw.codeSystem ?? 'http://loinc.org',
    // The route that receives the Bundle; undefined: the channel's routes.
    route: raw.route ?? undefined,
    // The path the Bundle is posted to (a FHIR server's base, where transactions go).
    path: raw.path ?? '/fhir',
  };
}

// `{ ok: settings }` or `{ error: message }`, checked on the instance's first request.
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

// ----- CSV (RFC 4180, as plugins/rust/lab-csv/src/csv.rs) -----

class CsvSyntaxError extends Error {
  constructor(line, message) {
    super(message);
    this.line = line;
  }
}

// The records of `text` as `{ line, fields }` (1-based line each starts on), skipping empty lines.
// Works on code points, as the Rust twin works on chars.
function parseCsv(input) {
  const text = Array.from(input.startsWith('\ufeff') ? input.slice(1) : input);
  const n = text.length;
  const records = [];
  let i = 0;
  let line = 1;
  while (i < n) {
    const start = line;
    const fields = [];
    let field = '';
    let quotedAny = false;
    for (;;) {
      if (i < n && text[i] === '"') {
        i += 1;
        quotedAny = true;
        const quoteLine = line;
        for (;;) {
          if (i >= n) throw new CsvSyntaxError(quoteLine, 'a quoted field is not closed');
          const c = text[i];
          i += 1;
          if (c === '"') {
            if (i < n && text[i] === '"') {
              i += 1;
              field += '"';
              continue;
            }
            break;
          }
          if (c === '\n') line += 1;
          field += c;
        }
        if (i < n && !',\n\r'.includes(text[i])) {
          throw new CsvSyntaxError(line, 'a closing quote is followed by more text in the field');
        }
      } else {
        while (i < n) {
          const c = text[i];
          if (c === ',' || c === '\n' || (c === '\r' && text[i + 1] === '\n')) break;
          field += c;
          i += 1;
        }
      }
      fields.push(field);
      field = '';
      if (i >= n) break;
      const c = text[i];
      i += 1;
      if (c === ',') continue;
      if (c === '\r') {
        // '\r\n', or after a quoted field a lone '\r': the record ends either way.
        if (text[i] === '\n') {
          i += 1;
          line += 1;
        }
        break;
      }
      if (c === '\n') line += 1;
      break;
    }
    if (!(fields.length === 1 && fields[0] === '' && !quotedAny)) records.push({ line: start, fields });
  }
  return records;
}

// One CSV record (with `\r\n`), quoting fields that need it.
function csvRecord(fields) {
  return `${fields.map((f) => (/[,"\r\n]/.test(f) ? `"${f.replaceAll('"', '""')}"` : f)).join(',')}\r\n`;
}

// ----- lab results (as plugins/rust/lab-csv/src/lab.rs) -----

const COLUMNS = ['patient_id', 'code', 'display', 'value', 'unit', 'effective'];
const [PATIENT_ID, CODE, DISPLAY, VALUE, UNIT, EFFECTIVE] = [0, 1, 2, 3, 4, 5];

class UploadError extends Error {
  constructor(line, column, message) {
    super(column === undefined ? `line ${line}: ${message}` : `line ${line}, column \`${column}\`: ${message}`);
  }
}

const asciiLower = (text) => text.replace(/[A-Z]/g, (c) => c.toLowerCase());

// Rust's `str::trim`: Unicode White_Space at both ends (JavaScript's `trim` differs: it takes
// U+FEFF and leaves U+0085).
const WHITE_SPACE = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const EDGES = new RegExp(`^${WHITE_SPACE}+|${WHITE_SPACE}+$`, 'g');
const trim = (text) => text.replace(EDGES, '');

// `text` as a JSON number, as its JSON text: an integer that fits 64 bits stays one; anything
// else must be a plain finite decimal (no exponent, no `inf`).
function number(text) {
  if (/^[+-]?[0-9]+$/.test(text)) {
    const value = BigInt(text);
    if (value >= -(2n ** 63n) && value < 2n ** 63n) return value.toString();
  }
  if (/^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)$/.test(text)) {
    const value = Number(text);
    if (Number.isFinite(value)) return jsonFloat(value);
  }
  return undefined;
}

// A float as serde_json writes an f64: always with a fraction or an exponent.
function jsonFloat(value) {
  const text = JSON.stringify(value);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

function parseRows(text) {
  let records;
  try {
    records = parseCsv(text);
  } catch (error) {
    if (error instanceof CsvSyntaxError) throw new UploadError(error.line, undefined, error.message);
    throw error;
  }
  if (records.length === 0) {
    throw new UploadError(1, undefined, 'the CSV is empty; it needs a header row and at least one result');
  }
  const [header, ...data] = records;
  const names = header.fields.map((name) => asciiLower(trim(name)));
  const positions = COLUMNS.map((column) => {
    const position = names.indexOf(column);
    if (position < 0) throw new UploadError(header.line, column, 'the header row lacks this column');
    return position;
  });
  const width = header.fields.length;
  const rows = data.map((record) => {
    if (record.fields.length !== width) {
      throw new UploadError(
        record.line,
        undefined,
        `expected ${width} fields, as in the header row, found ${record.fields.length}`,
      );
    }
    const fields = positions.map((p) => trim(record.fields[p]));
    for (const required of [PATIENT_ID, CODE, VALUE]) {
      if (fields[required] === '') throw new UploadError(record.line, COLUMNS[required], 'is empty');
    }
    const value = number(fields[VALUE]);
    if (value === undefined) {
      throw new UploadError(record.line, COLUMNS[VALUE], `\`${fields[VALUE]}\` is not a number`);
    }
    return { fields, value };
  });
  if (rows.length === 0) throw new UploadError(header.line, undefined, 'the CSV has a header row but no results');
  return rows;
}

// JSON text of an Observation; the value goes in as written by `number`.
function observation({ fields, value }, codeSystem) {
  const s = JSON.stringify;
  const coding = [`"system":${s(codeSystem)}`, `"code":${s(fields[CODE])}`];
  if (fields[DISPLAY]) coding.push(`"display":${s(fields[DISPLAY])}`);
  const quantity = [`"value":${value}`];
  if (fields[UNIT]) quantity.push(`"unit":${s(fields[UNIT])}`, `"system":${s(UCUM)}`, `"code":${s(fields[UNIT])}`);
  const parts = [
    '"resourceType":"Observation"',
    '"status":"final"',
    `"code":{"coding":[{${coding.join(',')}}]}`,
    `"subject":{"reference":${s(`Patient/${fields[PATIENT_ID]}`)}}`,
  ];
  if (fields[EFFECTIVE]) parts.push(`"effectiveDateTime":${s(fields[EFFECTIVE])}`);
  parts.push(`"valueQuantity":{${quantity.join(',')}}`);
  return `{${parts.join(',')}}`;
}

// A FHIR R4 `transaction` Bundle with one `Observation` per row, each `POST Observation`.
function transactionBundle(rows, codeSystem) {
  const entries = rows.map(
    (row) => `{"resource":${observation(row, codeSystem)},"request":{"method":"POST","url":"Observation"}}`,
  );
  return `{"resourceType":"Bundle","type":"transaction","entry":[${entries.join(',')}]}`;
}

// A FHIR `transaction-response` Bundle as CSV `row,status,location`; undefined if it is not one.
function responseCsv(body) {
  let bundle;
  try {
    bundle = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch {
    return undefined;
  }
  if (bundle === null || typeof bundle !== 'object' || Array.isArray(bundle)) return undefined;
  if (bundle.resourceType !== 'Bundle' || bundle.type !== 'transaction-response') return undefined;
  const entries = bundle.entry ?? [];
  if (!Array.isArray(entries)) return undefined;
  let out = csvRecord(['row', 'status', 'location']);
  for (const [i, entry] of entries.entries()) {
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) return undefined;
    let status = '';
    let location = '';
    const response = entry.response;
    if (response !== undefined && response !== null) {
      if (typeof response !== 'object' || Array.isArray(response)) return undefined;
      status = response.status ?? '';
      location = response.location ?? '';
      if (typeof status !== 'string' || typeof location !== 'string') return undefined;
    }
    out += csvRecord([String(i + 1), status, location]);
  }
  return out;
}

// ----- the plugin -----

function header(headers, name) {
  const wanted = asciiLower(name);
  const found = headers.find(([key]) => asciiLower(key) === wanted);
  return found === undefined ? undefined : found[1];
}

// `headers` with every field `name` replaced by one, at the end.
function setField(headers, name, value) {
  const wanted = asciiLower(name);
  return [...headers.filter(([key]) => asciiLower(key) !== wanted), [wanted, value]];
}

function isUpload(request) {
  if (request.method !== 'POST') return false;
  const value = header(request.headers, 'content-type');
  if (value === undefined) return true;
  const mediaType = asciiLower(trim(value.split(';')[0]));
  return mediaType === 'text/csv' || mediaType === 'application/csv';
}

// Header fields that described the client's body, not the Bundle that replaces it.
const BODY_FIELDS = ['content-length', 'transfer-encoding', 'content-encoding', 'content-md5', 'digest'];
// Header fields that described the upstream's body, not the CSV that replaces it.
const RESPONSE_BODY_FIELDS = ['content-length', 'transfer-encoding', 'content-encoding', 'etag'];

const encoder = new TextEncoder();
const reject = (status, reason) => ({ tag: 'reject', val: { status, reason } });

export const router = {
  onRequest(request) {
    const current = settings();
    if (current.error !== undefined) {
      log('error', 'Invalid settings.', [['error', current.error]]);
      return reject(500, current.error);
    }
    const s = current.ok;
    if (!isUpload(request)) {
      return { tag: 'forward', val: { target: { tag: 'channel-routes' }, rewrite: undefined } };
    }
    let text;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(request.body);
    } catch {
      return reject(400, 'The CSV upload is not UTF-8 text.');
    }
    let rows;
    try {
      rows = parseRows(text);
    } catch (error) {
      if (error instanceof UploadError) return reject(400, `Invalid lab results CSV: ${error.message}.`);
      throw error;
    }
    const bundle = transactionBundle(rows, s.codeSystem);
    log('info', 'Converted lab results.', [['observations', String(rows.length)]]);
    let headers = request.headers.filter(([name]) => !BODY_FIELDS.includes(name));
    headers = setField(headers, 'content-type', FHIR_JSON);
    headers = setField(headers, 'accept', FHIR_JSON);
    const target = s.route === undefined ? { tag: 'channel-routes' } : { tag: 'route', val: s.route };
    return {
      tag: 'forward',
      val: {
        target,
        rewrite: { method: 'POST', path: s.path, query: '', headers, body: encoder.encode(bundle) },
      },
    };
  },
};

export const transformer = {
  onResponse(request, response) {
    if (!isUpload(request) || response.status < 200 || response.status >= 300) return response;
    const csv = responseCsv(response.body);
    if (csv === undefined) return response;
    let headers = response.headers.filter(([name]) => !RESPONSE_BODY_FIELDS.includes(asciiLower(name)));
    headers = setField(headers, 'content-type', 'text/csv');
    return { status: response.status, headers, body: encoder.encode(csv) };
  },
};
