//! Every problem of an argument's value at once. GraphQL's own validation (async-graphql's
//! `ArgumentsOfCorrectType`) stops at the first problem of each argument: a form with a wrong
//! enum value and a required field left out would learn of one per submit. When that
//! validation refuses an argument, [`every_problem`] walks the argument's value against the
//! schema's types the same way and lists each problem, in async-graphql's own words, so that
//! each becomes an error with its `extensions.field`. Only a refused request is walked (every
//! request keeps a copy of its text and variables until validation, unless they are large), and
//! the walk is bounded: the first [`MAX_EXPANDED`] argument errors, at most [`MAX_ERRORS`]
//! errors in all — a document repeating one bad argument thousands of times gets
//! async-graphql's own errors for the rest.

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::registry::{MetaType, MetaTypeName, Registry};
use async_graphql::{Pos, ServerError, Variables};
use async_graphql_value::{ConstValue, Value};

/// How async-graphql's message about an argument's value begins.
pub(crate) const ARGUMENT_ERROR: &str = "Invalid value for argument ";

/// The most problems listed for one argument (an import's rows could have thousands).
const MAX_PROBLEMS: usize = 50;

/// The most argument errors walked again in one request.
const MAX_EXPANDED: usize = 10;

/// The most errors one request's validation answers once expanded.
const MAX_ERRORS: usize = 100;

/// Each problem of `value` as a value of `type_name`, in async-graphql's words (`"input.x",
/// expected type "Int"`), as its validation would find them one at a time.
pub(crate) fn every_problem(
    registry: &Registry,
    type_name: &str,
    value: &ConstValue,
    path: &str,
    out: &mut Vec<String>,
) {
    if out.len() >= MAX_PROBLEMS {
        return;
    }
    let mut report = |message: String| out.push(format!("\"{path}\", {message}"));
    match MetaTypeName::create(type_name) {
        MetaTypeName::NonNull(inner) => match value {
            ConstValue::Null => report(format!("expected type \"{inner}\"")),
            _ => every_problem(registry, inner, value, path, out),
        },
        MetaTypeName::List(inner) => match value {
            ConstValue::List(items) => {
                for (index, item) in items.iter().enumerate() {
                    every_problem(registry, inner, item, &format!("{path}.{index}"), out);
                }
            }
            ConstValue::Null => {}
            _ => every_problem(registry, inner, value, path, out),
        },
        MetaTypeName::Named(name) => {
            if matches!(value, ConstValue::Null) {
                return;
            }
            match registry.types.get(name) {
                Some(MetaType::Scalar {
                    is_valid: Some(is_valid),
                    ..
                }) if !is_valid(value) => report(format!("expected type \"{name}\"")),
                Some(MetaType::Enum { enum_values, .. }) => match value {
                    ConstValue::Enum(item) if enum_values.contains_key(item.as_str()) => {}
                    ConstValue::String(item) if enum_values.contains_key(item.as_str()) => {}
                    ConstValue::Enum(item) => report(format!(
                        "enumeration type \"{name}\" does not contain the value \"{item}\""
                    )),
                    ConstValue::String(item) => report(format!(
                        "enumeration type \"{name}\" does not contain the value \"{item}\""
                    )),
                    _ => report(format!("expected type \"{name}\"")),
                },
                Some(MetaType::InputObject {
                    input_fields,
                    oneof,
                    ..
                }) => {
                    let ConstValue::Object(values) = value else {
                        return;
                    };
                    if *oneof
                        && (values.len() != 1 || values.values().any(|v| *v == ConstValue::Null))
                    {
                        report("Oneof input objects requires have exactly one field".to_owned());
                    }
                    for field in input_fields.values() {
                        if out.len() >= MAX_PROBLEMS {
                            return;
                        }
                        match values.get(field.name.as_str()) {
                            Some(value) => every_problem(
                                registry,
                                &field.ty,
                                value,
                                &format!("{path}.{}", field.name),
                                out,
                            ),
                            None if MetaTypeName::create(&field.ty).is_non_null()
                                && field.default_value.is_none() =>
                            {
                                out.push(format!(
                                    "\"{path}\", field \"{}\" of type \"{}\" is required but not provided",
                                    field.name, field.ty
                                ));
                            }
                            None => {}
                        }
                    }
                    for key in values.keys() {
                        if !input_fields.contains_key(key.as_str()) && out.len() < MAX_PROBLEMS {
                            out.push(format!(
                                "\"{path}\", unknown field \"{key}\" of type \"{name}\""
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// An argument of the document: its name, its declared type and its value.
struct Found<'a> {
    name: &'a str,
    ty: String,
    value: &'a Value,
}

/// The argument whose name is at `pos`, searched from `parent`'s fields down.
fn argument_at<'a>(
    registry: &Registry,
    document: &'a ExecutableDocument,
    selections: &'a SelectionSet,
    parent: &str,
    pos: Pos,
    depth: usize,
) -> Option<Found<'a>> {
    if depth > 32 {
        return None;
    }
    for selection in &selections.items {
        let found = match &selection.node {
            Selection::Field(field) => {
                let meta = registry
                    .types
                    .get(parent)?
                    .field_by_name(&field.node.name.node);
                let here = field
                    .node
                    .arguments
                    .iter()
                    .find(|(name, _)| name.pos == pos)
                    .and_then(|(name, value)| {
                        let declared = meta?.args.get(name.node.as_str())?;
                        Some(Found {
                            name: name.node.as_str(),
                            ty: declared.ty.clone(),
                            value: &value.node,
                        })
                    });
                here.or_else(|| {
                    let child = MetaTypeName::concrete_typename(&meta?.ty).to_owned();
                    argument_at(
                        registry,
                        document,
                        &field.node.selection_set.node,
                        &child,
                        pos,
                        depth + 1,
                    )
                })
            }
            Selection::InlineFragment(fragment) => {
                let on = fragment
                    .node
                    .type_condition
                    .as_ref()
                    .map_or(parent, |on| on.node.on.node.as_str());
                argument_at(
                    registry,
                    document,
                    &fragment.node.selection_set.node,
                    on,
                    pos,
                    depth + 1,
                )
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .and_then(|fragment| {
                    argument_at(
                        registry,
                        document,
                        &fragment.node.selection_set.node,
                        fragment.node.type_condition.node.on.node.as_str(),
                        pos,
                        depth + 1,
                    )
                }),
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// How async-graphql's message about a variable's value that did not parse when its resolver
/// read it begins (`Failed to parse "NaiveDate": …`): it names the type, not the argument.
const PARSE_ERROR: &str = "Failed to parse \"";

/// Names the argument (as `extensions.field`) of each error about a variable's value of a root
/// field's argument that did not parse at run time: the error stands at the value's position.
pub(crate) fn name_unparsed_arguments(query: &str, errors: &mut [ServerError]) {
    if !errors.iter().any(|e| e.message.starts_with(PARSE_ERROR)) {
        return;
    }
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return;
    };
    for error in errors
        .iter_mut()
        .filter(|e| e.message.starts_with(PARSE_ERROR))
    {
        let Some(pos) = error.locations.first().copied() else {
            continue;
        };
        let named = document.operations.iter().find_map(|(_, operation)| {
            operation
                .node
                .selection_set
                .node
                .items
                .iter()
                .find_map(|selection| {
                    let Selection::Field(field) = &selection.node else {
                        return None;
                    };
                    field
                        .node
                        .arguments
                        .iter()
                        .find(|(_, value)| value.pos == pos)
                        .map(|(name, _)| name.node.to_string())
                })
        });
        if let Some(name) = named {
            let extensions = error
                .extensions
                .get_or_insert_with(async_graphql::ErrorExtensionValues::default);
            if extensions.get("field").is_none() {
                extensions.set("field", name);
            }
        }
    }
}

/// Replaces each of GraphQL's errors about an argument's value with one error per problem of
/// that value (the first of them is the one it told).
pub(crate) fn expand(
    registry: &Registry,
    query: &str,
    variables: &Variables,
    errors: &mut Vec<ServerError>,
) {
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return;
    };
    let roots: Vec<(&SelectionSet, &str)> = document
        .operations
        .iter()
        .filter_map(|(_, operation)| {
            let root = match operation.node.ty {
                OperationType::Query => Some(registry.query_type.as_str()),
                OperationType::Mutation => registry.mutation_type.as_deref(),
                OperationType::Subscription => registry.subscription_type.as_deref(),
            }?;
            Some((&operation.node.selection_set.node, root))
        })
        .collect();
    let mut expanded = Vec::with_capacity(errors.len());
    let mut walked = 0;
    let total = errors.len();
    for (index, error) in errors.drain(..).enumerate() {
        // Room for more than this one error, counting those still to come as they are.
        let room = MAX_ERRORS.saturating_sub(expanded.len() + (total - index - 1));
        let pos = error.locations.first().copied();
        let found = pos
            .filter(|_| {
                walked < MAX_EXPANDED && room > 1 && error.message.starts_with(ARGUMENT_ERROR)
            })
            .and_then(|pos| {
                roots.iter().find_map(|(selections, root)| {
                    argument_at(registry, &document, selections, root, pos, 0)
                })
            });
        let Some(found) = found else {
            expanded.push(error);
            continue;
        };
        walked += 1;
        let value = found
            .value
            .clone()
            .into_const_with(|name| variables.get(&name).cloned().ok_or(()));
        let mut problems = Vec::new();
        if let Ok(value) = value {
            every_problem(registry, &found.ty, &value, found.name, &mut problems);
        }
        if problems.len() < 2 {
            expanded.push(error);
            continue;
        }
        problems.truncate(room);
        expanded.extend(problems.into_iter().map(|problem| ServerError {
            message: format!("{ARGUMENT_ERROR}{problem}"),
            ..error.clone()
        }));
    }
    *errors = expanded;
}
