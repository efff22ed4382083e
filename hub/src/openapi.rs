//! The OpenAPI 3.1 description of the hub's HTTP/JSON API, derived from the protobuf
//! descriptors rather than written by hand.
//!
//! Request and response bodies are protobuf messages in the proto3 JSON mapping as `pbjson`
//! produces it with `preserve_proto_field_names()` and `emit_fields()`. [`document`] builds the
//! description from the encoded `FileDescriptorSet` (the one the build writes for gRPC
//! reflection) and a table of [`Route`]s, so it cannot drift from the `.proto` files:
//!
//! - every message and enum reachable from a route's request or response becomes one schema in
//!   `components.schemas`, keyed by its full proto name (`mosaic.admin.v1.SpawnRequest`);
//! - the comments in the descriptor's `source_code_info` become descriptions: of messages,
//!   fields, oneofs, enums and enum values, and an RPC's comment describes the operation of the
//!   same name;
//! - every operation requires the bearer token and documents the hub's error body.
//!
//! Field schemas follow the JSON mapping:
//!
//! | proto                                  | schema                                          |
//! |----------------------------------------|-------------------------------------------------|
//! | `int32`, `sint32`, `sfixed32`          | `integer` (`int32`)                             |
//! | `uint32`, `fixed32`                    | `integer` (`uint32`)                            |
//! | `int64`, `sint64`, `sfixed64`          | `string` (`int64`)                              |
//! | `uint64`, `fixed64`                    | `string` (`uint64`)                             |
//! | `double`, `float`                      | `number`                                        |
//! | `bool`, `string`                       | `boolean`, `string`                             |
//! | `bytes`                                | `string` with `contentEncoding: base64`          |
//! | enum                                   | `$ref` to a `string` schema of the value names  |
//! | message                                | `$ref` to an `object` schema                    |
//! | `repeated T`                           | `array` of `T`                                  |
//! | `map<K, V>`                            | `object` with `additionalProperties` of `V`     |
//!
//! Fields that may be unset (proto3 `optional` fields, message fields and oneof members) also
//! allow `null`; oneof members are ordinary properties, and their descriptions say which others
//! exclude them. Map entry types never get schemas of their own. The `google.protobuf` types
//! that have a special JSON form (`Timestamp`, `Duration`, `Struct`, `Value`, the wrappers, ...)
//! get that form.
//!
//! Descriptions need the descriptor set to carry source info: `protox::compile` keeps it, while
//! a `protox::Compiler` drops it unless asked with `include_source_info(true)`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};

/// A request or response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// A protobuf message in its JSON mapping, by its full proto name without a leading dot,
    /// e.g. `"mosaic.admin.v1.SpawnRequest"`.
    Message(&'static str),
}

/// One parameter of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub location: ParamIn,
    /// Whether the parameter must be given. Path parameters are always required.
    pub required: bool,
    /// Empty for none.
    pub description: &'static str,
    pub schema: ParamSchema,
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamIn {
    /// A `{name}` segment of the route's path template.
    Path,
    Query,
    Header,
}

/// The type of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSchema {
    String,
    Integer,
    Boolean,
    /// Comma-separated strings (`a,b,c`).
    CommaList,
}

/// One operation of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method in lower case: `"get"`, `"post"`, ...
    pub method: &'static str,
    /// The OpenAPI path template, e.g. `"/v1/jobs/{id}"`; each `{name}` needs a path
    /// [`Param`] of that name.
    pub path: &'static str,
    /// Unique among the routes, e.g. `"Spawn"`. When exactly one RPC in the descriptor set has
    /// this name, its comment becomes the operation's description.
    pub operation_id: &'static str,
    /// Empty for none.
    pub summary: &'static str,
    pub params: &'static [Param],
    /// The request body, as `application/json`.
    pub request: Body,
    /// The body of a `200` answer: `application/json`, or for [`sse`](Self::sse) the data of
    /// each event.
    pub response: Body,
    /// The `200` answer is a `text/event-stream` whose events each carry one `response` as
    /// JSON.
    pub sse: bool,
}

/// Builds the OpenAPI 3.1 document for `routes` over the messages of `descriptor_set` (an
/// encoded `google.protobuf.FileDescriptorSet` that includes every imported file), with `title`
/// and `version` in its `info`.
///
/// # Errors
///
/// If the descriptor set does not decode or is inconsistent, if a route names a message that
/// the set lacks, or if the routes themselves are inconsistent: a duplicate operation id or
/// method and path, an unknown method, or path parameters that do not match the template.
pub fn document(
    descriptor_set: &[u8],
    routes: &[Route],
    title: &str,
    version: &str,
) -> Result<Value, String> {
    let set = FileDescriptorSet::decode(descriptor_set)
        .map_err(|e| format!("decoding the descriptor set: {e}"))?;
    let index = Index::new(&set)?;
    let mut schemas = Schemas::new(&index);

    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids = BTreeSet::new();
    for route in routes {
        let context = format!(
            "route {} ({} {})",
            route.operation_id, route.method, route.path
        );
        if !operation_ids.insert(route.operation_id) {
            return Err(format!("{context}: the operation id is taken"));
        }
        if !METHODS.contains(&route.method) {
            return Err(format!("{context}: unknown method"));
        }
        let operation =
            operation(route, &index, &mut schemas).map_err(|e| format!("{context}: {e}"))?;
        let item = paths.entry(route.path).or_default();
        if item.insert(route.method.to_owned(), operation).is_some() {
            return Err(format!("{context}: another route has this method and path"));
        }
    }

    let mut components = schemas.finish()?;
    if components.contains_key(ERROR_SCHEMA) {
        return Err(format!(
            "a proto type is named {ERROR_SCHEMA}, like the error schema"
        ));
    }
    components.insert(ERROR_SCHEMA.to_owned(), error_schema());

    let paths: Map<String, Value> = paths
        .into_iter()
        .map(|(path, item)| (path.to_owned(), Value::Object(item)))
        .collect();
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": API_DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                SECURITY_SCHEME: { "type": "http", "scheme": "bearer" },
            },
        },
    }))
}

/// The methods OpenAPI allows in a path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Where `$ref`s to component schemas point.
const SCHEMA_REF: &str = "#/components/schemas/";

/// The key of the error body's schema (proto types are keyed by their package-qualified name).
const ERROR_SCHEMA: &str = "Error";

/// The key of the bearer token's security scheme.
const SECURITY_SCHEME: &str = "bearer";

/// `info.description`: the conventions every body follows.
const API_DESCRIPTION: &str = "\
Request and response bodies are protobuf messages in the proto3 JSON mapping, with the fields \
named as in the `.proto` files:

- 64-bit integers are decimal strings (requests may give numbers);
- enums are the value names (requests may give numbers);
- bytes are base64 strings;
- the fields of a oneof are ordinary properties, of which at most one is present;
- optional fields, message fields and oneof members may be absent or null: responses leave them \
out when unset and always include every other field, and requests may leave out any field.

Every request needs a bearer token (`Authorization: Bearer <token>`). A refusal has a status \
other than 200 and an `Error` body.";

/// The refusals every operation documents: the HTTP statuses the hub maps gRPC codes to.
const ERROR_RESPONSES: [(&str, &str); 7] = [
    (
        "400",
        "The request is invalid (`InvalidArgument`, reason `invalid_request`), or cannot be \
         served in the current state (`FailedPrecondition`, e.g. reason `resync_required`; \
         `OutOfRange`).",
    ),
    (
        "401",
        "The bearer token is missing or unknown (`Unauthenticated`).",
    ),
    (
        "403",
        "The token may not perform this operation (`PermissionDenied`).",
    ),
    (
        "404",
        "Not found (`NotFound`). Another workspace's jobs are reported as not found.",
    ),
    (
        "409",
        "Conflicts with an earlier request (`AlreadyExists`, e.g. a `request_id` reused for a \
         different request; `Aborted`).",
    ),
    ("429", "A limit was reached (`ResourceExhausted`)."),
    (
        "503",
        "The hub or a spoke cannot serve the request now (`Unavailable`).",
    ),
];

/// The schema of the body of every refusal.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "Why a request was refused: the body of every answer other than 200, \
                        and the data of a stream's final `error` event.",
        "required": ["error", "code", "reason"],
        "properties": {
            "error": {
                "type": "string",
                "description": "What went wrong, for people.",
            },
            "code": {
                "type": "string",
                "description": "The name of the gRPC status code.",
                "examples": ["NotFound", "InvalidArgument", "FailedPrecondition"],
            },
            "reason": {
                "type": "string",
                "description": "Why, for programs; empty when the refusal gives no reason.",
                "examples": ["not_found", "invalid_request", "resync_required"],
            },
            "cursor": {
                "type": "string",
                "description": "Only in a stream's final `error` event: the cursor to resume \
                                from after `resync_required` (empty when there is none).",
            },
        },
    })
}

/// The operation object of `route`, queueing the schemas it refers to.
fn operation(
    route: &Route,
    index: &Index<'_>,
    schemas: &mut Schemas<'_, '_>,
) -> Result<Value, String> {
    check_path_params(route)?;
    let mut op = Map::new();
    op.insert("operationId".into(), route.operation_id.into());
    if !route.summary.is_empty() {
        op.insert("summary".into(), route.summary.into());
    }
    if let Some(doc) = index.rpc_comment(route.operation_id) {
        op.insert("description".into(), doc.into());
    }
    if !route.params.is_empty() {
        op.insert(
            "parameters".into(),
            route.params.iter().map(parameter).collect(),
        );
    }
    if let Body::Message(name) = route.request {
        op.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": { "application/json": { "schema": schemas.message(name)? } },
            }),
        );
    }

    let mut responses = Map::new();
    responses.insert("200".into(), success(route, schemas)?);
    let error = json!({ "$ref": format!("{SCHEMA_REF}{ERROR_SCHEMA}") });
    for (status, description) in ERROR_RESPONSES {
        responses.insert(
            status.into(),
            json!({
                "description": description,
                "content": { "application/json": { "schema": error } },
            }),
        );
    }
    op.insert("responses".into(), Value::Object(responses));
    op.insert("security".into(), json!([{ SECURITY_SCHEME: [] }]));
    Ok(Value::Object(op))
}

/// The `200` response of `route`.
fn success(route: &Route, schemas: &mut Schemas<'_, '_>) -> Result<Value, String> {
    Ok(match (route.response, route.sse) {
        (Body::None, false) => json!({ "description": "Done; the body is empty." }),
        (Body::Message(name), false) => json!({
            "description": format!("Done: a `{name}`."),
            "content": { "application/json": { "schema": schemas.message(name)? } },
        }),
        (body, true) => {
            let mut description =
                String::from("A stream of server-sent events, until either side ends it.");
            let mut media = json!({ "schema": { "type": "string" } });
            if let Body::Message(name) = body {
                description.push_str(&format!(
                    " The `data` of each event is a `{name}` as JSON (its schema is the media \
                     type's `x-event-data`)."
                ));
                media["x-event-data"] = schemas.message(name)?;
            }
            description.push_str(
                " A stream that fails after it started ends with an event named `error` whose \
                 `data` is an `Error`.",
            );
            json!({
                "description": description,
                "content": { "text/event-stream": media },
            })
        }
    })
}

/// The parameter object of `param`.
fn parameter(param: &Param) -> Value {
    let location = match param.location {
        ParamIn::Path => "path",
        ParamIn::Query => "query",
        ParamIn::Header => "header",
    };
    let schema = match param.schema {
        ParamSchema::String => json!({ "type": "string" }),
        ParamSchema::Integer => json!({ "type": "integer" }),
        ParamSchema::Boolean => json!({ "type": "boolean" }),
        ParamSchema::CommaList => json!({ "type": "array", "items": { "type": "string" } }),
    };
    let mut p = json!({
        "name": param.name,
        "in": location,
        // OpenAPI requires path parameters to be required.
        "required": param.required || param.location == ParamIn::Path,
        "schema": schema,
    });
    if !param.description.is_empty() {
        p["description"] = param.description.into();
    }
    // Path and header parameters are comma-separated by default (style `simple`); a query
    // parameter needs style `form` without `explode` for `?name=a,b,c`.
    if param.schema == ParamSchema::CommaList && param.location == ParamIn::Query {
        p["style"] = "form".into();
        p["explode"] = false.into();
    }
    p
}

/// Checks that the `{name}`s of `route.path` are exactly its path parameters.
fn check_path_params(route: &Route) -> Result<(), String> {
    let mut in_template = BTreeSet::new();
    let mut rest = route.path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "the path template has an unclosed `{`".to_owned())?;
        in_template.insert(&after[..close]);
        rest = &after[close + 1..];
    }
    let declared: BTreeSet<&str> = route
        .params
        .iter()
        .filter(|p| p.location == ParamIn::Path)
        .map(|p| p.name)
        .collect();
    if let Some(name) = in_template.difference(&declared).next() {
        return Err(format!("{{{name}}} in the path has no path parameter"));
    }
    if let Some(name) = declared.difference(&in_template).next() {
        return Err(format!("path parameter {name} is not in the path"));
    }
    Ok(())
}

/// Field numbers in `descriptor.proto`: the steps of `source_code_info` paths.
mod tag {
    /// `FileDescriptorProto.message_type`.
    pub const FILE_MESSAGE: i32 = 4;
    /// `FileDescriptorProto.enum_type`.
    pub const FILE_ENUM: i32 = 5;
    /// `FileDescriptorProto.service`.
    pub const FILE_SERVICE: i32 = 6;
    /// `DescriptorProto.field`.
    pub const MESSAGE_FIELD: i32 = 2;
    /// `DescriptorProto.nested_type`.
    pub const MESSAGE_NESTED: i32 = 3;
    /// `DescriptorProto.enum_type`.
    pub const MESSAGE_ENUM: i32 = 4;
    /// `DescriptorProto.oneof_decl`.
    pub const MESSAGE_ONEOF: i32 = 8;
    /// `EnumDescriptorProto.value`.
    pub const ENUM_VALUE: i32 = 2;
    /// `ServiceDescriptorProto.method`.
    pub const SERVICE_METHOD: i32 = 2;
}

/// Where a declaration is: its file (by position in the set) and its `source_code_info` path.
#[derive(Debug, Clone)]
struct Site {
    file: usize,
    path: Vec<i32>,
}

impl Site {
    /// The site of element `index` of the repeated field `tag` of this declaration.
    fn child(&self, tag: i32, index: usize) -> Self {
        let mut path = self.path.clone();
        // No descriptor has 2^31 elements; a site past that just has no comment.
        path.extend([tag, i32::try_from(index).unwrap_or(i32::MAX)]);
        Self {
            file: self.file,
            path,
        }
    }
}

/// A message declaration.
struct MessageDecl<'a> {
    proto: &'a DescriptorProto,
    package: &'a str,
    site: Site,
}

impl MessageDecl<'_> {
    /// The synthetic `FooEntry` message of a `map<K, V> foo` field.
    fn is_map_entry(&self) -> bool {
        self.proto.options.as_ref().is_some_and(|o| o.map_entry())
    }
}

/// An enum declaration.
struct EnumDecl<'a> {
    proto: &'a EnumDescriptorProto,
    site: Site,
}

/// The declarations of a descriptor set by full name (without the leading dot), and its
/// comments.
struct Index<'a> {
    messages: BTreeMap<String, MessageDecl<'a>>,
    enums: BTreeMap<String, EnumDecl<'a>>,
    /// For each file, the comment of each commented declaration by its path.
    comments: Vec<HashMap<Vec<i32>, String>>,
    /// For each RPC method name, the comment of every method so named.
    methods: HashMap<&'a str, Vec<Option<String>>>,
}

impl<'a> Index<'a> {
    fn new(set: &'a FileDescriptorSet) -> Result<Self, String> {
        let mut index = Self {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
            comments: Vec::with_capacity(set.file.len()),
            methods: HashMap::new(),
        };
        for (number, file) in set.file.iter().enumerate() {
            let mut comments = HashMap::new();
            for location in file.source_code_info.iter().flat_map(|i| &i.location) {
                let text = [&location.leading_comments, &location.trailing_comments]
                    .into_iter()
                    .flatten()
                    .find_map(|c| clean_comment(c));
                if let Some(text) = text {
                    comments.entry(location.path.clone()).or_insert(text);
                }
            }
            index.comments.push(comments);

            let root = Site {
                file: number,
                path: Vec::new(),
            };
            let package = file.package();
            index.add_messages(
                package,
                package,
                &file.message_type,
                &root,
                tag::FILE_MESSAGE,
            )?;
            index.add_enums(package, &file.enum_type, &root, tag::FILE_ENUM)?;
            for (s, service) in file.service.iter().enumerate() {
                let service_site = root.child(tag::FILE_SERVICE, s);
                for (m, method) in service.method.iter().enumerate() {
                    let doc = index
                        .comment(&service_site.child(tag::SERVICE_METHOD, m))
                        .map(str::to_owned);
                    index.methods.entry(method.name()).or_default().push(doc);
                }
            }
        }
        Ok(index)
    }

    /// Adds `messages`, the repeated field `tag` of the declaration at `parent` in `scope`,
    /// with the messages and enums nested in them.
    fn add_messages(
        &mut self,
        package: &'a str,
        scope: &str,
        messages: &'a [DescriptorProto],
        parent: &Site,
        tag: i32,
    ) -> Result<(), String> {
        for (i, proto) in messages.iter().enumerate() {
            let name = qualify(scope, proto.name.as_deref())?;
            let site = parent.child(tag, i);
            self.add_messages(
                package,
                &name,
                &proto.nested_type,
                &site,
                tag::MESSAGE_NESTED,
            )?;
            self.add_enums(&name, &proto.enum_type, &site, tag::MESSAGE_ENUM)?;
            let decl = MessageDecl {
                proto,
                package,
                site,
            };
            if self.messages.insert(name.clone(), decl).is_some() {
                return Err(format!("message {name} is declared twice"));
            }
        }
        Ok(())
    }

    /// Adds `enums`, the repeated field `tag` of the declaration at `parent` in `scope`.
    fn add_enums(
        &mut self,
        scope: &str,
        enums: &'a [EnumDescriptorProto],
        parent: &Site,
        tag: i32,
    ) -> Result<(), String> {
        for (i, proto) in enums.iter().enumerate() {
            let name = qualify(scope, proto.name.as_deref())?;
            let site = parent.child(tag, i);
            if self
                .enums
                .insert(name.clone(), EnumDecl { proto, site })
                .is_some()
            {
                return Err(format!("enum {name} is declared twice"));
            }
        }
        Ok(())
    }

    /// The comment of the declaration at `site`, if it has one.
    fn comment(&self, site: &Site) -> Option<&str> {
        self.comments
            .get(site.file)?
            .get(&site.path)
            .map(String::as_str)
    }

    /// The comment of the one RPC method named `name`; none when several are.
    fn rpc_comment(&self, name: &str) -> Option<&str> {
        match self.methods.get(name)?.as_slice() {
            [doc] => doc.as_deref(),
            _ => None,
        }
    }
}

/// `name` in `scope` (a package, or a message's full name).
fn qualify(scope: &str, name: Option<&str>) -> Result<String, String> {
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("a declaration in {scope:?} has no name"))?;
    Ok(if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    })
}

/// A comment as a description: without the space after each `//`, trailing blanks and blank
/// edges; `None` if nothing is left.
fn clean_comment(raw: &str) -> Option<String> {
    let text = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The component schemas: built on demand as routes and fields refer to types.
struct Schemas<'i, 'a> {
    index: &'i Index<'a>,
    built: Map<String, Value>,
    /// Every type referred to so far.
    referred: BTreeSet<String>,
    /// Types referred to whose schemas are not built yet.
    pending: Vec<String>,
}

impl<'i, 'a> Schemas<'i, 'a> {
    fn new(index: &'i Index<'a>) -> Self {
        Self {
            index,
            built: Map::new(),
            referred: BTreeSet::new(),
            pending: Vec::new(),
        }
    }

    /// A `$ref` to message `name`, which must be in the descriptor set.
    fn message(&mut self, name: &str) -> Result<Value, String> {
        match self.index.messages.get(name) {
            Some(decl) if !decl.is_map_entry() => Ok(self.reference(name)),
            Some(_) => Err(format!("message {name} is a map entry")),
            None => Err(format!("message {name} is not in the descriptor set")),
        }
    }

    /// A `$ref` to the schema of type `name`, queued to be built.
    fn reference(&mut self, name: &str) -> Value {
        if self.referred.insert(name.to_owned()) {
            self.pending.push(name.to_owned());
        }
        json!({ "$ref": format!("{SCHEMA_REF}{name}") })
    }

    /// Builds every schema referred to, and what those refer to in turn.
    fn finish(mut self) -> Result<Map<String, Value>, String> {
        let index = self.index;
        while let Some(name) = self.pending.pop() {
            let schema = if let Some(schema) = well_known(&name) {
                schema
            } else if let Some(decl) = index.messages.get(&name) {
                self.message_schema(&name, decl)?
            } else if let Some(decl) = index.enums.get(&name) {
                enum_schema(index, decl)
            } else {
                return Err(format!("type {name} is not in the descriptor set"));
            };
            self.built.insert(name, schema);
        }
        Ok(self.built)
    }

    /// The schema of message `name`.
    fn message_schema(&mut self, name: &str, decl: &MessageDecl<'_>) -> Result<Value, String> {
        let proto = decl.proto;
        // The members of each real oneof, by position (proto3 `optional` fields are in
        // synthetic oneofs of their own, which stay empty here).
        let mut members: Vec<Vec<&str>> = vec![Vec::new(); proto.oneof_decl.len()];
        for field in &proto.field {
            if let Some(oneof) = real_oneof(field) {
                members
                    .get_mut(oneof)
                    .ok_or_else(|| format!("{name}.{}: no such oneof", field.name()))?
                    .push(field.name());
            }
        }

        let mut properties = Map::new();
        for (i, field) in proto.field.iter().enumerate() {
            let mut schema = self
                .field_schema(field)
                .map_err(|e| format!("{name}.{}: {e}", field.name()))?;
            let mut doc: Vec<String> = self
                .index
                .comment(&decl.site.child(tag::MESSAGE_FIELD, i))
                .into_iter()
                .map(str::to_owned)
                .collect();
            if let Some(oneof) = real_oneof(field) {
                let oneof_name = proto.oneof_decl.get(oneof).map_or("", |o| o.name());
                let all = members.get(oneof).map_or(&[][..], Vec::as_slice);
                doc.push(format!(
                    "Part of oneof `{oneof_name}`: at most one of {} is present.",
                    code_list(all)
                ));
            }
            describe(&mut schema, &doc);
            properties.insert(property_name(decl, field).to_owned(), schema);
        }

        let mut doc: Vec<String> = self
            .index
            .comment(&decl.site)
            .into_iter()
            .map(str::to_owned)
            .collect();
        for (i, (oneof, names)) in proto.oneof_decl.iter().zip(&members).enumerate() {
            if names.is_empty() {
                continue;
            }
            let mut line = format!(
                "Oneof `{}`: at most one of {} is present.",
                oneof.name(),
                code_list(names)
            );
            if let Some(comment) = self.index.comment(&decl.site.child(tag::MESSAGE_ONEOF, i)) {
                line.push(' ');
                line.push_str(comment);
            }
            doc.push(line);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        describe(&mut schema, &doc);
        Ok(schema)
    }

    /// The schema of `field`, without its description.
    fn field_schema(&mut self, field: &FieldDescriptorProto) -> Result<Value, String> {
        let ty = field_type(field)?;
        if field.label == Some(Label::Repeated as i32) {
            if ty == Type::Message {
                let entry = self.index.messages.get(type_name(field)?);
                if let Some(entry) = entry.filter(|e| e.is_map_entry()) {
                    let value = entry
                        .proto
                        .field
                        .iter()
                        .find(|f| f.number == Some(2))
                        .ok_or("the map entry has no value field")?;
                    // Map values are never null.
                    let value_schema = self.value_schema(value, field_type(value)?)?;
                    return Ok(json!({
                        "type": "object",
                        "additionalProperties": value_schema,
                    }));
                }
            }
            return Ok(json!({ "type": "array", "items": self.value_schema(field, ty)? }));
        }
        let schema = self.value_schema(field, ty)?;
        let may_be_unset =
            field.proto3_optional() || field.oneof_index.is_some() || ty == Type::Message;
        Ok(if may_be_unset {
            or_null(schema)
        } else {
            schema
        })
    }

    /// The schema of one value of `field`, whose type is `ty`.
    fn value_schema(&mut self, field: &FieldDescriptorProto, ty: Type) -> Result<Value, String> {
        Ok(match ty {
            Type::Double => json!({ "type": "number", "format": "double" }),
            Type::Float => json!({ "type": "number", "format": "float" }),
            Type::Int64 | Type::Sint64 | Type::Sfixed64 => {
                json!({ "type": "string", "format": "int64" })
            }
            Type::Uint64 | Type::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Type::Uint32 | Type::Fixed32 => {
                json!({ "type": "integer", "format": "uint32", "minimum": 0 })
            }
            Type::Bool => json!({ "type": "boolean" }),
            Type::String => json!({ "type": "string" }),
            Type::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Type::Message | Type::Enum => {
                let name = type_name(field)?;
                let known = match ty {
                    Type::Enum => self.index.enums.contains_key(name),
                    _ => self
                        .index
                        .messages
                        .get(name)
                        .is_some_and(|m| !m.is_map_entry()),
                };
                if !known {
                    return Err(format!("type {name} is not in the descriptor set"));
                }
                self.reference(name)
            }
            Type::Group => return Err("groups are not supported".to_owned()),
        })
    }
}

/// The schema of an enum: a string of one of its value names.
fn enum_schema(index: &Index<'_>, decl: &EnumDecl<'_>) -> Value {
    let mut names = Vec::with_capacity(decl.proto.value.len());
    let mut notes = Vec::new();
    for (i, value) in decl.proto.value.iter().enumerate() {
        names.push(value.name());
        if let Some(comment) = index.comment(&decl.site.child(tag::ENUM_VALUE, i)) {
            // A Markdown list item; its further lines are indented to stay in it.
            notes.push(format!(
                "- `{}`: {}",
                value.name(),
                comment.replace('\n', "\n  ")
            ));
        }
    }
    let mut doc: Vec<String> = index
        .comment(&decl.site)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !notes.is_empty() {
        doc.push(notes.join("\n"));
    }
    let mut schema = json!({ "type": "string", "enum": names });
    describe(&mut schema, &doc);
    schema
}

/// The type of `field`.
fn field_type(field: &FieldDescriptorProto) -> Result<Type, String> {
    let number = field.r#type.ok_or("the field has no type")?;
    Type::try_from(number).map_err(|_| format!("the field's type {number} is unknown"))
}

/// The oneof `field` belongs to, unless that is the synthetic oneof of a proto3 `optional`.
fn real_oneof(field: &FieldDescriptorProto) -> Option<usize> {
    if field.proto3_optional() {
        return None;
    }
    field.oneof_index.and_then(|i| usize::try_from(i).ok())
}

/// The full name of the message or enum type of `field`, without the leading dot.
fn type_name(field: &FieldDescriptorProto) -> Result<&str, String> {
    field
        .type_name
        .as_deref()
        .and_then(|n| n.strip_prefix('.'))
        .ok_or_else(|| format!("type name {:?} is not fully qualified", field.type_name()))
}

/// The JSON name of `field` of the message `decl`: its proto name, as the API's `pbjson` code
/// is built with `preserve_proto_field_names()`, except in `google.protobuf` messages, whose
/// `pbjson-types` code uses the lowerCamelCase JSON names.
fn property_name<'f>(decl: &MessageDecl<'_>, field: &'f FieldDescriptorProto) -> &'f str {
    match field.json_name.as_deref() {
        Some(json) if decl.package == "google.protobuf" && !json.is_empty() => json,
        _ => field.name(),
    }
}

/// `schema`, also allowing `null`.
fn or_null(mut schema: Value) -> Value {
    if let Some(ty @ Value::String(_)) = schema.get_mut("type") {
        let single = ty.take();
        *ty = json!([single, "null"]);
        return schema;
    }
    json!({ "anyOf": [schema, { "type": "null" }] })
}

/// Sets the description of `schema` to the paragraphs of `doc`, if there are any.
fn describe(schema: &mut Value, doc: &[String]) {
    if doc.is_empty() {
        return;
    }
    if let Some(object) = schema.as_object_mut() {
        object.insert("description".into(), doc.join("\n\n").into());
    }
}

/// `` `a`, `b`, `c` ``.
fn code_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The schema of a `google.protobuf` type whose JSON form is not that of an ordinary message
/// (these are the types `pbjson-types` maps specially).
fn well_known(name: &str) -> Option<Value> {
    let wrapper = |inner: Value, what: &str| {
        let mut schema = inner;
        schema["description"] = format!("A {what}; null when unset.").into();
        schema
    };
    Some(match name.strip_prefix("google.protobuf.")? {
        "Timestamp" => json!({
            "type": "string",
            "format": "date-time",
            "description": "An RFC 3339 time in UTC, e.g. `2024-05-01T12:00:00.250Z`.",
        }),
        "Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "Seconds with up to nine decimals and the suffix `s`, e.g. `1.5s`.",
        }),
        "Struct" => json!({ "type": "object", "description": "Any JSON object." }),
        "ListValue" => json!({ "type": "array", "description": "Any JSON array." }),
        "Value" => json!({ "description": "Any JSON value." }),
        "NullValue" => json!({ "type": "null" }),
        "DoubleValue" => wrapper(json!({ "type": "number", "format": "double" }), "number"),
        "FloatValue" => wrapper(json!({ "type": "number", "format": "float" }), "number"),
        "Int64Value" => wrapper(
            json!({ "type": "string", "format": "int64" }),
            "64-bit integer as a decimal string",
        ),
        "UInt64Value" => wrapper(
            json!({ "type": "string", "format": "uint64" }),
            "unsigned 64-bit integer as a decimal string",
        ),
        "Int32Value" => wrapper(
            json!({ "type": "integer", "format": "int32" }),
            "32-bit integer",
        ),
        "UInt32Value" => wrapper(
            json!({ "type": "integer", "format": "uint32", "minimum": 0 }),
            "unsigned 32-bit integer",
        ),
        "BoolValue" => wrapper(json!({ "type": "boolean" }), "boolean"),
        "StringValue" => wrapper(json!({ "type": "string" }), "string"),
        "BytesValue" => wrapper(
            json!({ "type": "string", "contentEncoding": "base64" }),
            "base64 string",
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const FILES: [&str; 2] = [
        "mosaic/federation/v1/federation.proto",
        "mosaic/admin/v1/admin.proto",
    ];

    /// The workspace's `proto/` (next to the crate), or `MOSAIC_PROTO_ROOT`.
    fn proto_root() -> PathBuf {
        std::env::var_os("MOSAIC_PROTO_ROOT").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto"),
            PathBuf::from,
        )
    }

    /// The real protos, compiled as the build compiles them (with source info).
    fn descriptors() -> Vec<u8> {
        let root = proto_root();
        protox::compile(FILES, [&root])
            .unwrap_or_else(|e| panic!("compiling {root:?} (see MOSAIC_PROTO_ROOT): {e}"))
            .encode_to_vec()
    }

    const WATCH_PARAMS: &[Param] = &[
        Param {
            name: "workspace",
            location: ParamIn::Query,
            required: false,
            description: "Only this workspace's jobs.",
            schema: ParamSchema::String,
        },
        Param {
            name: "types",
            location: ParamIn::Query,
            required: false,
            description: "Only these event types.",
            schema: ParamSchema::CommaList,
        },
        Param {
            name: "Last-Event-ID",
            location: ParamIn::Header,
            required: false,
            description: "Resume after this cursor.",
            schema: ParamSchema::String,
        },
    ];

    const ROUTES: &[Route] = &[
        Route {
            method: "post",
            path: "/v1/jobs",
            operation_id: "Spawn",
            summary: "Queue a job",
            params: &[],
            request: Body::Message("mosaic.admin.v1.SpawnRequest"),
            response: Body::Message("mosaic.admin.v1.JobResponse"),
            sse: false,
        },
        Route {
            method: "get",
            path: "/v1/jobs/{id}",
            operation_id: "GetStatus",
            summary: "A job with every attempt",
            params: &[Param {
                name: "id",
                location: ParamIn::Path,
                required: false,
                description: "A job id, or the agent id of one of its attempts.",
                schema: ParamSchema::String,
            }],
            request: Body::None,
            response: Body::Message("mosaic.admin.v1.JobResponse"),
            sse: false,
        },
        Route {
            method: "get",
            path: "/v1/jobs",
            operation_id: "ListAgents",
            summary: "Jobs, newest first",
            params: &[
                Param {
                    name: "states",
                    location: ParamIn::Query,
                    required: false,
                    description: "Only jobs in these states.",
                    schema: ParamSchema::CommaList,
                },
                Param {
                    name: "limit",
                    location: ParamIn::Query,
                    required: false,
                    description: "",
                    schema: ParamSchema::Integer,
                },
            ],
            request: Body::None,
            response: Body::Message("mosaic.admin.v1.ListAgentsResponse"),
            sse: false,
        },
        Route {
            method: "get",
            path: "/v1/watch",
            operation_id: "Watch",
            summary: "Events as they happen",
            params: WATCH_PARAMS,
            request: Body::None,
            response: Body::Message("mosaic.admin.v1.WatchResponse"),
            sse: true,
        },
    ];

    fn build(routes: &[Route]) -> Result<Value, String> {
        document(&descriptors(), routes, "Mosaic hub", "1.2.3")
    }

    fn schema<'d>(doc: &'d Value, name: &str) -> &'d Value {
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    fn property<'d>(doc: &'d Value, message: &str, field: &str) -> &'d Value {
        let property = &schema(doc, message)["properties"][field];
        assert!(property.is_object(), "no property {message}.{field}");
        property
    }

    /// Every `$ref` anywhere in `value`.
    fn refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::Object(object) => {
                for (key, item) in object {
                    match (key.as_str(), item) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(item, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves() {
        let doc = build(ROUTES).unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "suspiciously few refs: {found:?}");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for target in found {
            let name = target
                .strip_prefix(SCHEMA_REF)
                .unwrap_or_else(|| panic!("{target} does not point at a component schema"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
    }

    #[test]
    fn document_structure() {
        let doc = build(ROUTES).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Mosaic hub");
        assert_eq!(doc["info"]["version"], "1.2.3");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"],
            json!({ "type": "http", "scheme": "bearer" })
        );
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            ["/v1/jobs", "/v1/jobs/{id}", "/v1/watch"]
        );
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert_eq!(op["security"], json!([{ "bearer": [] }]), "{method} {path}");
                for status in ["400", "401", "403", "404", "409", "429", "503"] {
                    assert_eq!(
                        op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
        let error = schema(&doc, "Error");
        assert_eq!(error["required"], json!(["error", "code", "reason"]));
        for field in ["error", "code", "reason"] {
            assert_eq!(error["properties"][field]["type"], "string");
        }

        let spawn = &doc["paths"]["/v1/jobs"]["post"];
        assert_eq!(spawn["operationId"], "Spawn");
        assert_eq!(
            spawn["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/mosaic.admin.v1.SpawnRequest"
        );
        assert_eq!(
            spawn["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/mosaic.admin.v1.JobResponse"
        );
        // The RPC's comment describes the operation.
        assert!(
            spawn["description"]
                .as_str()
                .unwrap()
                .starts_with("Queue a job on a named spoke"),
        );

        let status = &doc["paths"]["/v1/jobs/{id}"]["get"];
        assert!(status.get("requestBody").is_none());
        assert_eq!(
            status["parameters"],
            json!([{
                "name": "id",
                "in": "path",
                "required": true,
                "description": "A job id, or the agent id of one of its attempts.",
                "schema": { "type": "string" },
            }])
        );

        let list = &doc["paths"]["/v1/jobs"]["get"]["parameters"];
        assert_eq!(list[0]["name"], "states");
        assert_eq!(list[0]["in"], "query");
        assert_eq!(list[0]["style"], "form");
        assert_eq!(list[0]["explode"], false);
        assert_eq!(list[0]["schema"]["type"], "array");
        assert_eq!(list[1]["schema"]["type"], "integer");
        assert!(list[1].get("description").is_none());

        let watch = &doc["paths"]["/v1/watch"]["get"];
        let ok = &watch["responses"]["200"]["content"];
        assert!(ok.get("application/json").is_none());
        assert_eq!(
            ok["text/event-stream"]["x-event-data"]["$ref"],
            "#/components/schemas/mosaic.admin.v1.WatchResponse"
        );
        assert_eq!(watch["parameters"][2]["in"], "header");
    }

    #[test]
    fn maps_are_objects_and_entries_have_no_schema() {
        let doc = build(ROUTES).unwrap();
        assert_eq!(
            property(&doc, "mosaic.admin.v1.SpawnRequest", "selector"),
            &json!({
                "type": "object",
                "additionalProperties": { "type": "string" },
                "description": "... or on the least-loaded healthy spoke whose labels match \
                                all of these (empty: any spoke)\nand that offers the profile. \
                                At most one of `spoke_id` and `selector`.",
            })
        );
        assert_eq!(
            property(&doc, "mosaic.federation.v1.Spawn", "env")["additionalProperties"],
            json!({ "type": "string" })
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in schemas.keys() {
            assert!(!name.ends_with("Entry"), "map entry {name} has a schema");
        }
        assert!(!schemas.contains_key("mosaic.admin.v1.SpawnRequest.SelectorEntry"));
    }

    #[test]
    fn scalars_enums_and_optionals() {
        let doc = build(ROUTES).unwrap();
        let job = "mosaic.federation.v1.JobStatus";
        let created = property(&doc, job, "created_at_ms");
        assert_eq!(created["type"], "string");
        assert_eq!(created["format"], "int64");
        assert_eq!(property(&doc, job, "attempts")["type"], "integer");
        assert_eq!(property(&doc, job, "queue_paused")["type"], "boolean");
        let seq = property(&doc, "mosaic.federation.v1.Event", "seq");
        assert_eq!(seq["type"], "string");
        assert_eq!(seq["format"], "uint64");

        assert_eq!(
            property(&doc, job, "state")["$ref"],
            "#/components/schemas/mosaic.federation.v1.JobState"
        );
        let state = schema(&doc, "mosaic.federation.v1.JobState");
        assert_eq!(state["type"], "string");
        assert!(
            state["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("JOB_STATE_PENDING"))
        );

        // proto3 `optional` scalars and message fields may be null.
        assert_eq!(
            property(&doc, job, "finished_at_ms")["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            property(&doc, "mosaic.federation.v1.Spawn", "priority")["type"],
            json!(["integer", "null"])
        );
        assert_eq!(
            property(&doc, "mosaic.admin.v1.JobResponse", "job")["anyOf"],
            json!([
                { "$ref": "#/components/schemas/mosaic.federation.v1.JobStatus" },
                { "type": "null" },
            ])
        );
        assert_eq!(
            property(&doc, job, "attempt_history")["items"]["$ref"],
            "#/components/schemas/mosaic.federation.v1.AgentStatus"
        );
        assert_eq!(
            property(&doc, "mosaic.admin.v1.ListAgentsResponse", "jobs")["items"]["$ref"],
            "#/components/schemas/mosaic.admin.v1.JobSnapshot"
        );
    }

    #[test]
    fn reachable_types_only() {
        let doc = build(ROUTES).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "mosaic.federation.v1.Spawn",
            "mosaic.federation.v1.AgentState",
            "mosaic.federation.v1.Event",
            "mosaic.federation.v1.EventType",
            "mosaic.federation.v1.OutputStream",
            "mosaic.admin.v1.SnapshotEnd",
        ] {
            assert!(schemas.contains_key(name), "{name} is missing");
        }
        for name in [
            "mosaic.federation.v1.SignedCommand",
            "mosaic.admin.v1.AuditRecord",
            "mosaic.admin.v1.WatchRequest",
        ] {
            assert!(!schemas.contains_key(name), "{name} is not reachable");
        }
    }

    #[test]
    fn comments_become_descriptions() {
        let doc = build(ROUTES).unwrap();
        assert_eq!(
            property(&doc, "mosaic.federation.v1.JobStatus", "attempts")["description"],
            "Attempts started so far, and how many of them failed."
        );
        assert!(
            property(&doc, "mosaic.admin.v1.SpawnRequest", "request_id")["description"]
                .as_str()
                .unwrap()
                .starts_with("The caller's id for this request")
        );
        assert_eq!(
            schema(&doc, "mosaic.admin.v1.JobResponse")["description"],
            "The job as the command left it."
        );
        let event_type = schema(&doc, "mosaic.federation.v1.EventType")["description"]
            .as_str()
            .unwrap();
        assert!(
            event_type.starts_with("The closed set of event types."),
            "{event_type}"
        );
        assert!(event_type.contains(
            "- `EVENT_TYPE_JOB_QUEUED`: Ready to run: created ready, a delay or backoff \
             ended, or back in the queue after a spoke\n  stopped while it ran."
        ));
    }

    #[test]
    fn oneofs_are_documented() {
        let doc = build(ROUTES).unwrap();
        let response = schema(&doc, "mosaic.admin.v1.WatchResponse");
        assert!(
            response["description"].as_str().unwrap().contains(
                "Oneof `item`: at most one of `event`, `job`, `snapshot_end` is present."
            )
        );
        let end = property(&doc, "mosaic.admin.v1.WatchResponse", "snapshot_end");
        assert_eq!(
            end["description"],
            "The snapshot is complete; events follow.\n\nPart of oneof `item`: at most one of \
             `event`, `job`, `snapshot_end` is present."
        );
        // A scalar oneof member may be null too.
        assert_eq!(
            property(&doc, "mosaic.federation.v1.Event", "message")["type"],
            json!(["string", "null"])
        );
        // A proto3 `optional` is no oneof to the reader.
        let priority = property(&doc, "mosaic.federation.v1.Spawn", "priority");
        assert!(!priority["description"].as_str().unwrap().contains("oneof"));
    }

    #[test]
    fn unknown_message_is_an_error() {
        let route = Route {
            request: Body::Message("mosaic.admin.v1.NoSuchRequest"),
            ..ROUTES[0]
        };
        let error = build(&[route]).unwrap_err();
        assert!(error.contains("mosaic.admin.v1.NoSuchRequest"), "{error}");
        assert!(error.contains("Spawn"), "{error}");

        let route = Route {
            response: Body::Message("mosaic.admin.v1.SpawnRequest.SelectorEntry"),
            ..ROUTES[0]
        };
        assert!(build(&[route]).unwrap_err().contains("map entry"));
    }

    #[test]
    fn inconsistent_routes_are_errors() {
        let duplicate = build(&[ROUTES[0], ROUTES[0]]).unwrap_err();
        assert!(duplicate.contains("operation id"), "{duplicate}");

        let unmatched = Route {
            path: "/v1/jobs/{job}",
            ..ROUTES[1]
        };
        let error = build(&[unmatched]).unwrap_err();
        assert!(error.contains("{job}"), "{error}");

        let method = Route {
            method: "GET",
            ..ROUTES[1]
        };
        assert!(build(&[method]).unwrap_err().contains("unknown method"));
    }

    #[test]
    fn output_is_deterministic() {
        let a = serde_json::to_string(&build(ROUTES).unwrap()).unwrap();
        let b = serde_json::to_string(&build(ROUTES).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    /// `protox::Compiler` drops source info unless asked; `protox::compile` keeps it.
    #[test]
    fn descriptions_need_source_info() {
        let bare = protox::Compiler::new([proto_root()])
            .unwrap()
            .include_imports(true)
            .open_files(FILES)
            .unwrap()
            .encode_file_descriptor_set();
        let doc = document(&bare, ROUTES, "t", "v").unwrap();
        assert!(
            property(&doc, "mosaic.federation.v1.JobStatus", "attempts")
                .get("description")
                .is_none()
        );
        let with_info = protox::Compiler::new([proto_root()])
            .unwrap()
            .include_imports(true)
            .include_source_info(true)
            .open_files(FILES)
            .unwrap()
            .encode_file_descriptor_set();
        assert_eq!(
            document(&with_info, ROUTES, "Mosaic hub", "1.2.3").unwrap(),
            build(ROUTES).unwrap()
        );
    }

    /// A file resolver serving one in-memory file.
    struct Memory(&'static str);

    impl protox::file::FileResolver for Memory {
        fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
            match name {
                "test.proto" => protox::file::File::from_source(name, self.0),
                _ => Err(protox::Error::file_not_found(name)),
            }
        }
    }

    #[test]
    fn well_known_types_have_their_json_form() {
        let mut resolver = protox::file::ChainFileResolver::new();
        resolver.add(Memory(
            r#"
            syntax = "proto3";
            package test;
            import "google/protobuf/timestamp.proto";
            import "google/protobuf/wrappers.proto";
            import "google/protobuf/struct.proto";
            message Thing {
              google.protobuf.Timestamp at = 1;
              google.protobuf.Int64Value count = 2;
              google.protobuf.Struct extra = 3;
              map<int64, Thing> children = 4;
              bytes blob = 5;
            }
            "#,
        ));
        resolver.add(protox::file::GoogleFileResolver::new());
        let set = protox::Compiler::with_file_resolver(resolver)
            .include_imports(true)
            .include_source_info(true)
            .open_file("test.proto")
            .unwrap()
            .encode_file_descriptor_set();
        let route = Route {
            method: "get",
            path: "/thing",
            operation_id: "Thing",
            summary: "",
            params: &[],
            request: Body::None,
            response: Body::Message("test.Thing"),
            sse: false,
        };
        let doc = document(&set, &[route], "t", "v").unwrap();
        let timestamp = schema(&doc, "google.protobuf.Timestamp");
        assert_eq!(timestamp["type"], "string");
        assert_eq!(timestamp["format"], "date-time");
        assert_eq!(schema(&doc, "google.protobuf.Int64Value")["type"], "string");
        assert_eq!(schema(&doc, "google.protobuf.Struct")["type"], "object");
        // Struct's own fields (Value, ListValue, NullValue) are not needed.
        assert!(
            doc["components"]["schemas"]
                .get("google.protobuf.Value")
                .is_none()
        );
        assert_eq!(
            property(&doc, "test.Thing", "children")["additionalProperties"]["$ref"],
            "#/components/schemas/test.Thing"
        );
        assert_eq!(
            property(&doc, "test.Thing", "blob")["contentEncoding"],
            "base64"
        );
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for target in found {
            let name = target.strip_prefix(SCHEMA_REF).unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{target}");
        }
    }
}
