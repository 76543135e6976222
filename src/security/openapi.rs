//! Request rules taken from an OpenAPI 3 document: a route names a document
//! and an `operationId`, and the gateway checks that operation's query and
//! header parameters and its JSON request body before forwarding.
//!
//! Compiled at config load into the same [`Validate`] the hand-written rules
//! use: each parameter's schema and the body schema become JSON Schema
//! validators with the document's `components` alongside, so local `$ref`s
//! (`#/components/schemas/...`) resolve. OpenAPI 3.1 schemas are JSON
//! Schema 2020-12; 3.0 schemas are accepted as far as they are JSON Schema
//! (`nullable` is not understood). Path parameters are left to routing,
//! cookie parameters are not checked.
//!
//! [`Validate`]: super::validate::Validate

use std::sync::Arc;

use serde_json::{Map, Value};

/// Where a parameter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamIn {
    Query,
    Header,
}

/// One checked parameter.
#[derive(Debug, Clone)]
pub struct ParamRule {
    pub name: Box<[u8]>,
    pub location: ParamIn,
    pub required: bool,
    pub schema: Option<Arc<jsonschema::Validator>>,
    /// The schema's `type`, to read a text value as a number or boolean.
    pub kind: ValueKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    String,
    Integer,
    Number,
    Boolean,
}

impl ParamRule {
    /// Whether a (decoded) text value satisfies the parameter's schema.
    pub fn accepts(&self, text: &str) -> bool {
        let Some(schema) = &self.schema else {
            return true;
        };
        let value = match self.kind {
            ValueKind::String => Value::String(text.to_string()),
            ValueKind::Integer => match text.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => return false,
            },
            ValueKind::Number => match text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Value::Number(n),
                None => return false,
            },
            ValueKind::Boolean => match text {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return false,
            },
        };
        schema.is_valid(&value)
    }
}

/// What an operation requires, compiled.
#[derive(Debug, Default)]
pub struct Operation {
    pub params: Vec<ParamRule>,
    pub body: Option<Arc<jsonschema::Validator>>,
    pub body_required: bool,
    /// Media types of `requestBody.content` (lowercase).
    pub content_types: Vec<Box<[u8]>>,
}

/// Loads `operation_id` from the document at `path` (JSON or YAML).
///
/// # Errors
/// A message naming what is missing or invalid.
pub fn load(path: &std::path::Path, operation_id: &str) -> Result<Operation, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| format!("{}: not a JSON or YAML document: {e}", path.display()))?;
    if !doc
        .get("openapi")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("3."))
    {
        return Err(format!("{}: not an OpenAPI 3 document", path.display()));
    }
    let components = doc
        .get("components")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let (path_item, op) = find_operation(&doc, operation_id).ok_or_else(|| {
        format!(
            "{}: no operation with operationId {operation_id:?}",
            path.display()
        )
    })?;

    // Path-level parameters, overridden by the operation's (same name and place).
    let mut raw_params: Vec<Value> = Vec::new();
    for list in [path_item.get("parameters"), op.get("parameters")] {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            let p = resolve(&doc, p)?;
            let key = (p.get("name").cloned(), p.get("in").cloned());
            raw_params.retain(|q| (q.get("name").cloned(), q.get("in").cloned()) != key);
            raw_params.push(p.clone());
        }
    }
    let mut params = Vec::new();
    for p in &raw_params {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a parameter has no name")?;
        let location = match p.get("in").and_then(Value::as_str) {
            Some("query") => ParamIn::Query,
            Some("header") => ParamIn::Header,
            // path parameters are matched by routing; cookies are not checked
            Some("path" | "cookie") => continue,
            _ => return Err(format!("parameter {name:?}: unknown `in`")),
        };
        let schema = p.get("schema");
        let kind = match schema.and_then(|s| s.get("type")).and_then(Value::as_str) {
            Some("integer") => ValueKind::Integer,
            Some("number") => ValueKind::Number,
            Some("boolean") => ValueKind::Boolean,
            _ => ValueKind::String,
        };
        let schema = match schema {
            Some(s) => {
                Some(compile(s, &components).map_err(|e| format!("parameter {name:?}: {e}"))?)
            }
            None => None,
        };
        let name = match location {
            ParamIn::Header => name.to_ascii_lowercase(),
            ParamIn::Query => name.to_string(),
        };
        params.push(ParamRule {
            name: name.into_bytes().into(),
            location,
            required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
            schema,
            kind,
        });
    }

    let mut operation = Operation {
        params,
        ..Operation::default()
    };
    if let Some(body) = op.get("requestBody") {
        let body = resolve(&doc, body)?;
        operation.body_required = body
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let content = body.get("content").and_then(Value::as_object);
        for (media, spec) in content.into_iter().flatten() {
            operation
                .content_types
                .push(media.to_ascii_lowercase().into_bytes().into());
            if media.eq_ignore_ascii_case("application/json") {
                if let Some(schema) = spec.get("schema") {
                    operation.body = Some(
                        compile(schema, &components).map_err(|e| format!("request body: {e}"))?,
                    );
                }
            }
        }
    }
    Ok(operation)
}

fn find_operation<'a>(doc: &'a Value, id: &str) -> Option<(&'a Value, &'a Value)> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let paths = doc.get("paths")?.as_object()?;
    paths.values().find_map(|item| {
        METHODS.iter().find_map(|m| {
            let op = item.get(*m)?;
            (op.get("operationId")?.as_str()? == id).then_some((item, op))
        })
    })
}

/// Follows a local `$ref` (`#/...`) once, as parameters and request bodies
/// may be references into `components`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> Result<&'a Value, String> {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("{r:?}: only local references are supported"))?;
            doc.pointer(pointer)
                .ok_or_else(|| format!("{r:?} does not resolve"))
        }
        None => Ok(v),
    }
}

/// A validator for `schema` with the document's components beside it, so
/// `#/components/...` references resolve.
fn compile(schema: &Value, components: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    let mut root = match schema {
        Value::Object(m) => m.clone(),
        Value::Bool(_) => return Err("boolean schemas are not supported here".into()),
        _ => return Err("a schema must be an object".into()),
    };
    root.insert("components".into(), components.clone());
    jsonschema::draft202012::new(&Value::Object(root))
        .map(Arc::new)
        .map_err(|e| format!("invalid schema: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
openapi: 3.1.0
info: { title: shop, version: "1" }
paths:
  /items:
    parameters:
      - { name: X-Tenant, in: header, required: true, schema: { type: string, pattern: "^[a-z]+$" } }
    post:
      operationId: createItem
      parameters:
        - $ref: '#/components/parameters/Page'
        - { name: dry_run, in: query, schema: { type: boolean } }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Item' }
components:
  parameters:
    Page: { name: page, in: query, schema: { type: integer, minimum: 1, maximum: 100 } }
  schemas:
    Item:
      type: object
      required: [name]
      properties: { name: { type: string }, price: { $ref: '#/components/schemas/Price' } }
    Price: { type: number, minimum: 0 }
"#;

    fn op() -> Operation {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.yaml");
        std::fs::write(&path, DOC).unwrap();
        load(&path, "createItem").unwrap()
    }

    #[test]
    fn parameters_and_body_from_the_document() {
        let op = op();
        assert_eq!(op.params.len(), 3);
        let page = op.params.iter().find(|p| &*p.name == b"page").unwrap();
        assert!(page.accepts("5") && !page.accepts("0") && !page.accepts("x"));
        let tenant = op.params.iter().find(|p| &*p.name == b"x-tenant").unwrap();
        assert!(tenant.required && tenant.location == ParamIn::Header);
        assert!(tenant.accepts("acme") && !tenant.accepts("ACME"));
        let dry = op.params.iter().find(|p| &*p.name == b"dry_run").unwrap();
        assert!(dry.accepts("true") && !dry.accepts("yes"));
        let body = op.body.as_ref().unwrap();
        assert!(body.is_valid(&serde_json::json!({"name": "x", "price": 2})));
        assert!(!body.is_valid(&serde_json::json!({"name": "x", "price": -2})));
        assert!(op.body_required);
        assert_eq!(
            op.content_types,
            vec![b"application/json".to_vec().into_boxed_slice()]
        );
    }

    #[test]
    fn unknown_operations_and_documents_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.yaml");
        std::fs::write(&path, DOC).unwrap();
        assert!(load(&path, "nope").unwrap_err().contains("no operation"));
        std::fs::write(&path, "swagger: '2.0'").unwrap();
        assert!(load(&path, "createItem")
            .unwrap_err()
            .contains("not an OpenAPI 3"));
    }
}
