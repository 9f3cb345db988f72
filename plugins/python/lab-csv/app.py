"""Lab results as CSV in, FHIR out: the Python twin of plugins/rust/lab-csv (same settings, same
Bundle, same CSV answer, same refusals and log line; plugins/cases/lab-csv.json checks them).

Requests: a `POST` whose `content-type` is `text/csv` or `application/csv` (or that has none) is
read as CSV with a header row naming the columns `patient_id`, `code`, `display`, `value`, `unit`
and `effective`, in any order. Each row becomes an `Observation` in one FHIR `transaction` Bundle,
forwarded to `route` (default: the channel's routes) as `POST <path>` with an empty query. A
malformed upload is refused with 400 naming the line and column. Other requests pass unchanged.

Responses: when the upstream answers an upload with 2xx and a `transaction-response` Bundle, the
client gets CSV instead (`row,status,location`, rows numbered from 1). Anything else passes.

Settings (all optional): `codeSystem` (default `http://loinc.org`), `route` (default: the
channel's routes), `path` (default `/fhir`).
"""

import json
import re
from typing import List, Optional, Tuple, Union

from wit_world import exports
from wit_world.imports import config, log
from wit_world.imports.types import (
    Action,
    Action_Forward,
    Action_Reject,
    Forward,
    Rejection,
    Request,
    Response,
    Rewrite,
    Target_ChannelRoutes,
    Target_Route,
)

FHIR_JSON = "application/fhir+json"
UCUM = "http://unitsofmeasure.org"
KEYS = ("codeSystem", "route", "path")

# ----- settings -----


class Settings:
    """The plugin's settings (`plugin.config`)."""

    def __init__(self, raw: object):
        if not isinstance(raw, dict):
            raise ValueError("invalid type: expected a JSON object")
        for key in raw:
            if key not in KEYS:
                expected = ", ".join(f"`{k}`" for k in KEYS)
                raise ValueError(f"unknown field `{key}`, expected one of {expected}")
        for key in KEYS:
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"invalid type for `{key}`: expected a string")
        # The `system` of every Observation's code.
        self.code_system: str = raw.get("codeSystem")
        if self.code_system is None:
            self.code_system = "http://loinc.org"
        # The route that receives the Bundle; None: the channel's routes.
        self.route: Optional[str] = raw.get("route")
        # The path the Bundle is posted to (a FHIR server's base, where transactions go).
        self.path: str = raw["path"] if raw.get("path") is not None else "/fhir"


# The settings, checked on the instance's first request: the Settings, or the error message.
_checked: Union[Settings, str, None] = None


def settings() -> Union[Settings, str]:
    global _checked
    if _checked is None:
        try:
            _checked = Settings(json.loads(config.all()))
        except ValueError as error:
            _checked = f"plugin settings are invalid: {error}"
    return _checked


# ----- CSV (RFC 4180, as plugins/rust/lab-csv/src/csv.rs) -----


class CsvSyntaxError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def parse_csv(text: str) -> List[Tuple[int, List[str]]]:
    """The records of `text` and the (1-based) line each starts on, skipping empty lines."""
    if text.startswith("\ufeff"):
        text = text[1:]
    records = []
    i, n, line = 0, len(text), 1
    while i < n:
        start, fields, field, quoted_any = line, [], [], False
        while True:
            if i < n and text[i] == '"':
                i += 1
                quoted_any = True
                quote_line = line
                while True:
                    if i >= n:
                        raise CsvSyntaxError(quote_line, "a quoted field is not closed")
                    c = text[i]
                    i += 1
                    if c == '"':
                        if i < n and text[i] == '"':
                            i += 1
                            field.append('"')
                            continue
                        break
                    if c == "\n":
                        line += 1
                    field.append(c)
                if i < n and text[i] not in ",\n\r":
                    raise CsvSyntaxError(
                        line, "a closing quote is followed by more text in the field"
                    )
            else:
                while i < n:
                    c = text[i]
                    if c in ",\n" or (c == "\r" and text[i + 1 : i + 2] == "\n"):
                        break
                    field.append(c)
                    i += 1
            fields.append("".join(field))
            field = []
            if i >= n:
                break
            c = text[i]
            i += 1
            if c == ",":
                continue
            if c == "\r":
                # '\r\n', or after a quoted field a lone '\r': the record ends either way.
                if text[i : i + 1] == "\n":
                    i += 1
                    line += 1
                break
            if c == "\n":
                line += 1
            break
        if not (len(fields) == 1 and fields[0] == "" and not quoted_any):
            records.append((start, fields))
    return records


def csv_record(fields: List[str]) -> str:
    """One CSV record (with `\\r\\n`), quoting fields that need it."""
    out = []
    for field in fields:
        if any(c in field for c in ',"\r\n'):
            out.append('"' + field.replace('"', '""') + '"')
        else:
            out.append(field)
    return ",".join(out) + "\r\n"


# ----- lab results (as plugins/rust/lab-csv/src/lab.rs) -----

COLUMNS = ("patient_id", "code", "display", "value", "unit", "effective")
PATIENT_ID, CODE, DISPLAY, VALUE, UNIT, EFFECTIVE = range(6)
INTEGER = re.compile(r"[+-]?[0-9]+")
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
I64 = (-(2**63), 2**63 - 1)


class UploadError(Exception):
    """Why an upload is not a lab results CSV, naming the line and, where there is one, the column."""

    def __init__(self, line: int, column: Optional[str], message: str):
        super().__init__(message)
        self.line, self.column, self.message = line, column, message

    def __str__(self) -> str:
        if self.column is not None:
            return f"line {self.line}, column `{self.column}`: {self.message}"
        return f"line {self.line}: {self.message}"


# Unicode White_Space, what Rust's `str::trim` removes (`str.strip()` also takes U+001C..U+001F).
WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def trim(text: str) -> str:
    return text.strip(WHITE_SPACE)


def ascii_lower(text: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def number(text: str) -> Optional[Union[int, float]]:
    """`text` as a JSON number: an integer (that fits 64 bits) stays one; anything else must be a
    plain finite decimal (no exponent, no `inf`)."""
    if INTEGER.fullmatch(text):
        value = int(text)
        if I64[0] <= value <= I64[1]:
            return value
    if DECIMAL.fullmatch(text):
        value = float(text)
        return value if value not in (float("inf"), float("-inf")) else None
    return None


def parse_rows(text: str) -> List[Tuple[List[str], Union[int, float]]]:
    """The data rows of a lab results CSV, each as its [COLUMNS] values and the number."""
    try:
        records = parse_csv(text)
    except CsvSyntaxError as error:
        raise UploadError(error.line, None, error.message) from None
    if not records:
        raise UploadError(
            1, None, "the CSV is empty; it needs a header row and at least one result"
        )
    header_line, header = records[0]
    names = [ascii_lower(trim(name)) for name in header]
    positions = []
    for column in COLUMNS:
        if column not in names:
            raise UploadError(header_line, column, "the header row lacks this column")
        positions.append(names.index(column))
    width = len(header)
    rows = []
    for line, record in records[1:]:
        if len(record) != width:
            raise UploadError(
                line,
                None,
                f"expected {width} fields, as in the header row, found {len(record)}",
            )
        fields = [trim(record[p]) for p in positions]
        for required in (PATIENT_ID, CODE, VALUE):
            if not fields[required]:
                raise UploadError(line, COLUMNS[required], "is empty")
        value = number(fields[VALUE])
        if value is None:
            raise UploadError(line, COLUMNS[VALUE], f"`{fields[VALUE]}` is not a number")
        rows.append((fields, value))
    if not rows:
        raise UploadError(header_line, None, "the CSV has a header row but no results")
    return rows


def observation(fields: List[str], value: Union[int, float], code_system: str) -> dict:
    coding = {"system": code_system, "code": fields[CODE]}
    if fields[DISPLAY]:
        coding["display"] = fields[DISPLAY]
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{fields[PATIENT_ID]}"},
    }
    if fields[EFFECTIVE]:
        resource["effectiveDateTime"] = fields[EFFECTIVE]
    quantity = {"value": value}
    if fields[UNIT]:
        quantity.update(unit=fields[UNIT], system=UCUM, code=fields[UNIT])
    resource["valueQuantity"] = quantity
    return resource


def transaction_bundle(rows, code_system: str) -> bytes:
    """A FHIR R4 `transaction` Bundle with one `Observation` per row, each `POST Observation`."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(fields, value, code_system),
                "request": {"method": "POST", "url": "Observation"},
            }
            for fields, value in rows
        ],
    }
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def response_csv(body: bytes) -> Optional[str]:
    """A FHIR `transaction-response` Bundle as CSV `row,status,location`; None if it is not one."""
    try:
        bundle = json.loads(body.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(bundle, dict):
        return None
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction-response":
        return None
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return None
    out = [csv_record(["row", "status", "location"])]
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            return None
        response = entry.get("response")
        if response is None:
            status, location = "", ""
        elif not isinstance(response, dict):
            return None
        else:
            status = response.get("status", "")
            location = response.get("location")
            location = "" if location is None else location
            if not isinstance(status, str) or not isinstance(location, str):
                return None
        out.append(csv_record([str(i), status, location]))
    return "".join(out)


# ----- the plugin -----


def header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    """The first value of header `name`, compared ignoring ASCII case."""
    wanted = ascii_lower(name)
    for key, value in headers:
        if ascii_lower(key) == wanted:
            return value
    return None


def set_field(headers: List[Tuple[str, str]], name: str, value: str) -> List[Tuple[str, str]]:
    """`headers` with every field `name` replaced by one, at the end."""
    wanted = ascii_lower(name)
    kept = [(k, v) for k, v in headers if ascii_lower(k) != wanted]
    kept.append((wanted, value))
    return kept


def is_upload(request: Request) -> bool:
    """Whether `request` is a CSV upload this plugin converts."""
    if request.method != "POST":
        return False
    value = header(request.headers, "content-type")
    if value is None:
        return True
    media_type = ascii_lower(trim(value.split(";")[0]))
    return media_type in ("text/csv", "application/csv")


# Header fields that described the client's body, not the Bundle that replaces it.
BODY_FIELDS = ("content-length", "transfer-encoding", "content-encoding", "content-md5", "digest")
# Header fields that described the upstream's body, not the CSV that replaces it.
RESPONSE_BODY_FIELDS = ("content-length", "transfer-encoding", "content-encoding", "etag")


class Router(exports.Router):
    def on_request(self, request: Request) -> Action:
        s = settings()
        if isinstance(s, str):
            log.log(log.Level.ERROR, "Invalid settings.", [("error", s)])
            return Action_Reject(Rejection(500, s))
        if not is_upload(request):
            return Action_Forward(Forward(Target_ChannelRoutes(), None))
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            return Action_Reject(Rejection(400, "The CSV upload is not UTF-8 text."))
        try:
            rows = parse_rows(text)
        except UploadError as error:
            return Action_Reject(Rejection(400, f"Invalid lab results CSV: {error}."))
        bundle = transaction_bundle(rows, s.code_system)
        log.log(log.Level.INFO, "Converted lab results.", [("observations", str(len(rows)))])
        headers = [(k, v) for k, v in request.headers if k not in BODY_FIELDS]
        headers = set_field(headers, "content-type", FHIR_JSON)
        headers = set_field(headers, "accept", FHIR_JSON)
        rewrite = Rewrite("POST", s.path, "", headers, bundle)
        target = Target_Route(s.route) if s.route is not None else Target_ChannelRoutes()
        return Action_Forward(Forward(target, rewrite))


class Transformer(exports.Transformer):
    def on_response(self, request: Request, response: Response) -> Response:
        if not is_upload(request) or not 200 <= response.status < 300:
            return response
        csv = response_csv(response.body)
        if csv is None:
            return response
        headers = [
            (k, v) for k, v in response.headers if ascii_lower(k) not in RESPONSE_BODY_FIELDS
        ]
        headers = set_field(headers, "content-type", "text/csv")
        return Response(response.status, headers, csv.encode("utf-8"))
