//! Makes the generated OpenAPI description say exactly what the server accepts and
//! answers, from the same constants the checks use: text lengths and the characters
//! refused, numeric ranges, the calendar's dates, the instrument catalogue's item
//! counts and scores, each route's parameters, and every status a route can answer.
//! `tests/contract.rs` holds the server to it with schemathesis.

use chrono::{Datelike, Utc};
use circle_events::group::Sensitivity;
use circle_events::group::{
    GOAL_LEVELS, GOAL_WEIGHTS, MAX_ACTIVE_GOALS, MAX_ATTENDANCE_MARKS, MAX_CAPACITY,
    MAX_FACILITATORS, MAX_NAME_LEN, MAX_REASON_LEN, MAX_SESSION_MINUTES,
};
use circle_events::instruments::Catalogue;
use circle_projections::consent::SENSITIVITY_HEADER;
use serde_json::{json, Map, Value};

use super::access::MAX_LIMIT as MAX_ACCESS_LIMIT;
use super::clients::MAX_PERSONAL_FIELD;
use super::goals::MAX_GOAL_TITLE;
use super::groups::MAX_SESSIONS_LIMIT;
use super::guard::PURPOSE;
use super::history::MAX_LIMIT as MAX_HISTORY_LIMIT;
use crate::access_log::{MAX_PURPOSE, PURPOSE_PATTERN};

/// Text with at least one character that is not white space, and no control
/// character but tab, line feed and carriage return (`JsonBody` refuses those, and a
/// text that trims to nothing is refused by the aggregates). White space is Rust's
/// (`char::is_whitespace`), spelled out: ECMA's `\s` differs from it.
const TEXT_PATTERN: &str = concat!(
    r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*",
    r"[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]",
    r"[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
);
/// `calendar::EARLIEST` to `calendar::LATEST` (1900-01-01 to 2199-12-31); the
/// `date` format rules out days a month does not have.
const DATE_PATTERN: &str = r"^(19[0-9]{2}|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";
/// An RFC 3339 time whose own date is in the calendar, without a leap second.
const TIME_PATTERN: &str = concat!(
    r"^(19[0-9]{2}|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?",
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
);

pub fn constrain(doc: &mut Value) {
    dates(doc);
    schemas(doc);
    parameters(doc);
    purpose(doc);
    report_bodies(doc);
    exports(doc);
    fhir(doc);
    statuses(doc);
}

/// What every report answers beside its own figures (the reports' bodies are not
/// described field by field): how many clients the reporter form left out for want
/// of reporting consent, and the 42 CFR Part 2 label in the body and the
/// `Circle-Sensitivity` header when a group it covers carries it.
fn report_bodies(doc: &mut Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    let label = json!({"type": "string", "enum": [Sensitivity::Part2.as_str()]});
    let header = json!({SENSITIVITY_HEADER: {
        "description": "42 CFR Part 2: the report covers an addiction recovery group",
        "schema": label,
    }});
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/api/v1/reports/") {
            continue;
        }
        let Some(ok) = item.pointer_mut("/get/responses/200") else {
            continue;
        };
        ok["content"] = json!({"application/json": {"schema": {
            "type": "object",
            "required": ["left_out_without_consent"],
            "properties": {
                "left_out_without_consent": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Clients left out because they withdrew reporting consent (reporter form; 0 in the full form)",
                },
                "sensitivity": label,
            },
        }}});
        ok["headers"] = header.clone();
    }
    if let Some(ok) = paths
        .get_mut("/api/v1/alerts")
        .and_then(|item| item.pointer_mut("/get/responses/200"))
    {
        ok["headers"] = header;
    }
}

/// The FHIR export's parameters: `_type`, `_since`, `_elements`, `_outputFormat`,
/// `Prefer`, and the job's id and file names.
fn fhir(doc: &mut Value) {
    use circle_projections::fhir::resources::ResourceType;
    let kick_off = &mut doc["paths"]["/api/v1/fhir/Group/{group_id}/$export"]["get"];
    if let Some(Value::Array(params)) = kick_off.get_mut("parameters") {
        for param in params {
            let extra = match param["name"].as_str() {
                Some("_type") => json!({"pattern": super::fhir::type_pattern()}),
                Some("_since") => json!({"format": "date-time", "pattern": TIME_PATTERN}),
                Some("_elements") => json!({"pattern": super::fhir::ELEMENTS_PATTERN}),
                Some("_outputFormat") => json!({"enum": super::fhir::OUTPUT_FORMATS}),
                Some("Prefer") => {
                    param["required"] = json!(true);
                    json!({"enum": ["respond-async"]})
                }
                _ => continue,
            };
            merge(param.get_mut("schema"), extra);
        }
    }
    let names: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
    for (path, method) in [
        ("/api/v1/fhir/jobs/{job_id}", "get"),
        ("/api/v1/fhir/jobs/{job_id}", "delete"),
        ("/api/v1/fhir/jobs/{job_id}/files/{resource_type}", "get"),
    ] {
        if let Some(Value::Array(params)) = doc["paths"][path][method].get_mut("parameters") {
            for param in params {
                let extra = match param["name"].as_str() {
                    Some("job_id") => json!({"format": "uuid"}),
                    Some("resource_type") => json!({"enum": names}),
                    _ => continue,
                };
                merge(param.get_mut("schema"), extra);
            }
        }
    }
}

/// The export routes: their parameters' forms, and the columns of each form with
/// what a row is, from `exports::columns` (the contract the unit tests pin).
fn exports(doc: &mut Value) {
    use circle_projections::exports::{columns, Form, FORMAT_VERSION};
    for (path, kind, encoding) in super::exports::ROUTES {
        let op = &mut doc["paths"][format!("/api/v1{path}")]["get"];
        if let Some(Value::Array(params)) = op.get_mut("parameters") {
            for param in params {
                let extra = match param["name"].as_str() {
                    Some("as_of") => json!({"format": "date-time", "pattern": TIME_PATTERN}),
                    Some("purpose") => json!({"enum": ["research"]}),
                    Some("min_position") => json!({"minimum": 0}),
                    Some("focus") => {
                        param["schema"] = json!({"$ref": "#/components/schemas/Focus"});
                        continue;
                    }
                    _ => continue,
                };
                merge(param.get_mut("schema"), extra);
            }
        }
        let form = |form: Form| {
            format!(
                "{} ({}): {}",
                match form {
                    Form::Full => "Full form",
                    Form::Reporter => "Reporter form",
                },
                kind.row_meaning(form),
                columns(kind, form).join(", ")
            )
        };
        let layout = match encoding {
            crate::exports::Encoding::Csv => {
                "RFC 4180 CSV: a header row of the column names, CRLF line ends, a field \
                 holding a comma, quote, CR or LF quoted with quotes doubled; an empty field \
                 is a value withheld or absent."
            }
            crate::exports::Encoding::Ndjson => {
                "NDJSON: a first line {\"export\": {export, format_version, form, purpose, \
                 scope, as_of, position, left_out, rows, columns}}, then one object per row \
                 with the columns as keys in order; null is a value withheld or absent."
            }
        };
        op["description"] = json!(format!(
            "{layout} Columns (format version {FORMAT_VERSION}). {}. {}. Headers: \
             Circle-Left-Out (clients consent kept out: without research consent for \
             purpose=research, or having withdrawn reporting consent in the reporter form), \
             Circle-Position (the log position the rows reflect), Circle-Export-Form (full \
             or reporter: the form the policy gives the caller). Recorded in the access log.",
            form(Form::Full),
            form(Form::Reporter)
        ));
    }
}

/// `Circle-Purpose` on every operation that takes a token: recorded in the access
/// log with what the caller sees.
fn purpose(doc: &mut Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if path == "/api/v1/openapi.json" {
            continue;
        }
        let Value::Object(methods) = item else {
            continue;
        };
        for op in methods.values_mut() {
            let header = json!({
                "name": PURPOSE,
                "in": "header",
                "required": false,
                "description": "Why the caller asks, recorded in the access log.",
                "schema": {"type": "string", "maxLength": MAX_PURPOSE, "pattern": PURPOSE_PATTERN},
            });
            match op.get_mut("parameters") {
                Some(Value::Array(params)) => params.push(header),
                _ => op["parameters"] = json!([header]),
            }
        }
    }
}

/// Every `date` and `date-time` in the description is one the calendar takes.
fn dates(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let pattern = match map.get("format").and_then(Value::as_str) {
                Some("date") => Some(DATE_PATTERN),
                Some("date-time") => Some(TIME_PATTERN),
                _ => None,
            };
            if let Some(pattern) = pattern {
                map.insert("pattern".into(), json!(pattern));
            }
            map.values_mut().for_each(dates);
        }
        Value::Array(items) => items.iter_mut().for_each(dates),
        _ => {}
    }
}

fn text(max: usize) -> Value {
    json!({"minLength": 1, "maxLength": max, "pattern": TEXT_PATTERN})
}

fn merge(target: Option<&mut Value>, extra: Value) {
    if let (Some(Value::Object(target)), Value::Object(extra)) = (target, extra) {
        target.extend(extra);
    }
}

fn schemas(doc: &mut Value) {
    let this_year = Utc::now().year();
    let level = json!({"minimum": GOAL_LEVELS.start(), "maximum": GOAL_LEVELS.end()});
    let rules: [(&str, &str, Value); 18] = [
        ("CreateGroupRequest", "name", text(MAX_NAME_LEN)),
        (
            "CreateGroupRequest",
            "capacity",
            json!({"minimum": 1, "maximum": MAX_CAPACITY}),
        ),
        (
            "CreateGroupRequest",
            "facilitators",
            json!({"minItems": 1, "maxItems": MAX_FACILITATORS, "uniqueItems": true}),
        ),
        (
            "ScheduleSessionRequest",
            "duration_minutes",
            json!({"minimum": 1, "maximum": MAX_SESSION_MINUTES}),
        ),
        ("CancelSessionRequest", "reason", text(MAX_REASON_LEN)),
        (
            "RecordAttendanceRequest",
            "records",
            json!({"minItems": 1, "maxItems": MAX_ATTENDANCE_MARKS}),
        ),
        (
            "RegisterClientRequest",
            "display_name",
            text(MAX_PERSONAL_FIELD),
        ),
        ("RegisterClientRequest", "contact", text(MAX_PERSONAL_FIELD)),
        (
            "RegisterClientRequest",
            "birth_year",
            json!({"minimum": 1900, "maximum": this_year}),
        ),
        ("RecordFeedbackRequest", "items", json!({})),
        ("RecordMeasureRequest", "items", json!({})),
        ("SetGoalRequest", "title", text(MAX_GOAL_TITLE)),
        (
            "CreateTokenRequest",
            "label",
            text(crate::tokens::MAX_LABEL_CHARS),
        ),
        (
            "SetGoalRequest",
            "weight",
            json!({"minimum": GOAL_WEIGHTS.start(), "maximum": GOAL_WEIGHTS.end()}),
        ),
        ("SetGoalRequest", "start_level", level.clone()),
        ("CheckInRequest", "level", level.clone()),
        ("SessionCheckIn", "level", level),
        (
            "SessionCheckInsRequest",
            "check_ins",
            json!({"minItems": 1, "maxItems": MAX_ACTIVE_GOALS * MAX_CAPACITY as usize}),
        ),
    ];
    let schemas = &mut doc["components"]["schemas"];
    for (schema, property, extra) in rules {
        merge(schemas[schema]["properties"].get_mut(property), extra);
    }
    for schema in ["RecordFeedbackRequest", "RecordMeasureRequest"] {
        by_instrument(&mut schemas[schema]);
    }
}

/// Which item scores an instrument takes, as one alternative per instrument: exactly
/// its number of items, each one of the scores it allows (whole numbers, or tenths).
fn by_instrument(schema: &mut Value) {
    let catalogue = Catalogue::builtin();
    let mut names: Vec<&str> = catalogue
        .instruments()
        .map(|d| d.instrument.as_str())
        .collect();
    names.dedup();
    let alternatives: Vec<Value> = names
        .iter()
        .filter_map(|name| catalogue.current(name))
        .map(|definition| {
            let step = if definition.decimals == 0 { 10 } else { 1 };
            let scores: Vec<Value> = (definition.item_min.tenths()..=definition.item_max.tenths())
                .filter(|tenths| tenths % step == 0)
                .map(|tenths| {
                    if tenths % 10 == 0 {
                        json!(tenths / 10)
                    } else {
                        json!(tenths as f64 / 10.0)
                    }
                })
                .collect();
            json!({
                "properties": {
                    "instrument": {"const": definition.instrument},
                    "items": {
                        "minItems": definition.items,
                        "maxItems": definition.items,
                        "items": {"enum": scores},
                    },
                },
            })
        })
        .collect();
    let names: Vec<Value> = names.iter().map(|n| json!(n)).collect();
    merge(
        schema["properties"].get_mut("instrument"),
        json!({"enum": names}),
    );
    if let Value::Object(map) = schema {
        map.insert("oneOf".into(), Value::Array(alternatives));
    }
}

/// The query parameters each report route reads, and which it requires.
fn parameters(doc: &mut Value) {
    let routes: [(&str, &[(&str, bool)]); 5] = [
        (
            "/api/v1/reports/attendance",
            &[
                ("group_id", true),
                ("as_of", false),
                ("min_position", false),
            ],
        ),
        (
            "/api/v1/reports/retention",
            &[
                ("group_id", false),
                ("focus", false),
                ("as_of", false),
                ("min_position", false),
            ],
        ),
        (
            "/api/v1/reports/outcomes",
            &[
                ("group_id", true),
                ("instrument", true),
                ("as_of", false),
                ("min_position", false),
            ],
        ),
        (
            "/api/v1/reports/goals",
            &[
                ("group_id", true),
                ("as_of", false),
                ("min_position", false),
            ],
        ),
        (
            "/api/v1/alerts",
            &[
                ("group_id", false),
                ("as_of", false),
                ("min_position", false),
            ],
        ),
    ];
    for (path, keep) in routes {
        let Some(Value::Array(params)) = doc["paths"][path]["get"].get_mut("parameters") else {
            continue;
        };
        params.retain_mut(|param| {
            let name = param["name"].as_str().unwrap_or_default();
            match keep.iter().find(|(kept, _)| *kept == name) {
                Some((_, required)) => {
                    param["required"] = json!(required);
                    true
                }
                None => false,
            }
        });
    }
    for (op, _) in routes {
        if let Some(Value::Array(params)) = doc["paths"][op]["get"].get_mut("parameters") {
            for param in params {
                let extra = match param["name"].as_str() {
                    Some("as_of") => json!({"format": "date-time", "pattern": TIME_PATTERN}),
                    Some("min_position") => json!({"minimum": 0}),
                    Some("focus") => json!({"$ref": "#/components/schemas/Focus"}),
                    Some("instrument") => json!({"enum": instrument_names()}),
                    _ => continue,
                };
                if extra.get("$ref").is_some() {
                    param["schema"] = extra;
                } else {
                    merge(param.get_mut("schema"), extra);
                }
            }
        }
    }
    audit_parameters(doc);
    if let Some(Value::Array(params)) =
        doc["paths"]["/api/v1/audit/access"]["get"].get_mut("parameters")
    {
        for param in params {
            let extra = match param["name"].as_str() {
                Some("from" | "to") => json!({"format": "date-time", "pattern": TIME_PATTERN}),
                Some("after") => json!({"minimum": 0}),
                Some("limit") => json!({"minimum": 1, "maximum": MAX_ACCESS_LIMIT}),
                _ => continue,
            };
            merge(param.get_mut("schema"), extra);
        }
    }
    let group = &mut doc["paths"]["/api/v1/groups/{group_id}"]["get"]["parameters"];
    if let Value::Array(params) = group {
        for param in params {
            if param["name"] == "sessions_limit" {
                merge(
                    param.get_mut("schema"),
                    json!({"minimum": 1, "maximum": MAX_SESSIONS_LIMIT}),
                );
            }
        }
    }
    let entity_reads: [(&str, &str, Value); 6] = [
        (
            "/api/v1/groups/{group_id}",
            "as_of",
            json!({"format": "date-time", "pattern": TIME_PATTERN}),
        ),
        (
            "/api/v1/clients/{client_id}",
            "as_of",
            json!({"format": "date-time", "pattern": TIME_PATTERN}),
        ),
        (
            "/api/v1/groups/{group_id}/history",
            "after",
            json!({"minimum": 0}),
        ),
        (
            "/api/v1/groups/{group_id}/history",
            "limit",
            json!({"minimum": 1, "maximum": MAX_HISTORY_LIMIT}),
        ),
        (
            "/api/v1/clients/{client_id}/history",
            "after",
            json!({"minimum": 0}),
        ),
        (
            "/api/v1/clients/{client_id}/history",
            "limit",
            json!({"minimum": 1, "maximum": MAX_HISTORY_LIMIT}),
        ),
    ];
    for (path, name, extra) in entity_reads {
        if let Some(Value::Array(params)) = doc["paths"][path]["get"].get_mut("parameters") {
            for param in params.iter_mut().filter(|p| p["name"] == name) {
                merge(param.get_mut("schema"), extra.clone());
            }
        }
    }
}

/// The audit routes' query bounds (`http/audit.rs`); a value inside them that the log
/// rules out (beyond the head or the latest checkpoint, `from` after `to`) is 422.
fn audit_parameters(doc: &mut Value) {
    let bounds: [(&str, &str, Value); 9] = [
        ("/api/v1/audit/events", "after", json!({"minimum": 0})),
        (
            "/api/v1/audit/events",
            "limit",
            json!({"minimum": 1, "maximum": 10_000}),
        ),
        (
            "/api/v1/audit/events",
            "from",
            json!({"format": "date-time", "pattern": TIME_PATTERN}),
        ),
        (
            "/api/v1/audit/events",
            "to",
            json!({"format": "date-time", "pattern": TIME_PATTERN}),
        ),
        (
            "/api/v1/audit/checkpoint",
            "tree_size",
            json!({"minimum": 0}),
        ),
        (
            "/api/v1/audit/proof/inclusion",
            "position",
            json!({"minimum": 1}),
        ),
        (
            "/api/v1/audit/proof/inclusion",
            "tree_size",
            json!({"minimum": 1}),
        ),
        (
            "/api/v1/audit/proof/consistency",
            "from",
            json!({"minimum": 1}),
        ),
        (
            "/api/v1/audit/proof/consistency",
            "to",
            json!({"minimum": 1}),
        ),
    ];
    for (path, name, extra) in bounds {
        if let Some(Value::Array(params)) = doc["paths"][path]["get"].get_mut("parameters") {
            for param in params.iter_mut().filter(|p| p["name"] == name) {
                merge(param.get_mut("schema"), extra.clone());
            }
        }
    }
}

fn instrument_names() -> Vec<Value> {
    let mut names: Vec<&str> = Catalogue::builtin()
        .instruments()
        .map(|d| d.instrument.as_str())
        .collect();
    names.dedup();
    names.into_iter().map(|n| json!(n)).collect()
}

/// Every status a route can answer, in place of a `4XX` range: each refusal is
/// problem+json, and a 503 (store unavailable, overload, timeout, a `min_position`
/// not reached in time) says when to retry.
fn statuses(doc: &mut Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Value::Object(methods) = item else {
            continue;
        };
        for (method, op) in methods.iter_mut() {
            let Some(Value::Object(responses)) = op.get_mut("responses") else {
                continue;
            };
            responses.remove("4XX");
            let mut codes: Vec<u16> = vec![503];
            if path != "/api/v1/openapi.json" {
                // 400 for a bad Circle-Purpose, if nothing else.
                codes.extend([400, 401, 403]);
            }
            if method == "post" {
                codes.extend([404, 409, 413, 415, 422]);
            } else if path.contains('{') || op_is_report(path) {
                codes.push(404);
            }
            // A cursor to no session; a min_position beyond the log; group_id and
            // focus together; an as_of outside the log's time.
            if path == "/api/v1/groups/{group_id}"
                || path == "/api/v1/clients/{client_id}"
                || op_is_report(path)
            {
                codes.push(422);
            }
            // Audit: a size or position beyond the log or the latest checkpoint (422);
            // no checkpoint, key or position (404).
            if path.starts_with("/api/v1/audit/") && path != "/api/v1/audit/verify" {
                if path != "/api/v1/audit/key" {
                    codes.extend([400, 422]);
                }
                if path != "/api/v1/audit/events" && path != "/api/v1/audit/proof/consistency" {
                    codes.push(404);
                }
            }
            codes.sort_unstable();
            let Some(Value::Object(responses)) = op.get_mut("responses") else {
                continue;
            };
            for code in codes {
                responses.insert(code.to_string(), problem(code));
            }
        }
    }
}

fn op_is_report(path: &str) -> bool {
    path.starts_with("/api/v1/reports")
        || path.starts_with("/api/v1/exports/")
        || path == "/api/v1/alerts"
}

fn problem(code: u16) -> Value {
    let mut response = Map::new();
    let reason = axum::http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    response.insert("description".into(), json!(reason));
    response.insert(
        "content".into(),
        json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}),
    );
    if code == 503 {
        response.insert(
            "headers".into(),
            json!({"Retry-After": {"description": "Seconds to wait before trying again", "required": true, "schema": {"type": "integer", "minimum": 0}}}),
        );
    }
    Value::Object(response)
}
