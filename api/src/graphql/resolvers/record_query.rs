//! The filter, order and search arguments of record lists, validated against the datasheet
//! and turned into a [`RecordQuery`].

use async_graphql::{Enum, InputObject};
use custos_domain::{parse_date, CustomKind, CustomSchema, Datasheet, FieldKind};
use custos_projections::record_query::{
    Direction, Field, Filter, Op, OrderKey, RecordCursor, RecordQuery,
};
use serde::Serialize;

use crate::error::snake_to_camel;
use crate::error::ApiError;
use crate::graphql::pagination::page_size;

/// Bounds on one list request, so a filter cannot buy unbounded work.
const MAX_FILTER_NODES: usize = 100;
const MAX_FILTER_DEPTH: usize = 8;
const MAX_IN_VALUES: usize = 100;
const MAX_ORDER_KEYS: usize = 3;
const MAX_SEARCH: usize = 200;

/// A condition on records. A node names a `field` with one or more operators (all must
/// hold), and/or combines nodes with `and`, `or`, `not`; everything in one node must hold.
/// Values are text: dates `YYYY-MM-DD`, times RFC 3339, choices by name (`FULL_TIME` or
/// `full_time`). On list fields (`emails`, `phones`, `tags`) `eq`, `contains` and
/// `startsWith` hold when some entry matches.
#[derive(InputObject, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecordFilter {
    /// A field of the datasheet as its type names it (`department`, `startDate`,
    /// `managerId`...), a custom field as `custom.<key>`, or `createdAt` / `updatedAt`.
    field: Option<String>,
    eq: Option<String>,
    neq: Option<String>,
    #[graphql(name = "in")]
    #[serde(rename = "in")]
    in_: Option<Vec<String>>,
    gt: Option<String>,
    gte: Option<String>,
    lt: Option<String>,
    lte: Option<String>,
    /// Case-insensitive substring.
    contains: Option<String>,
    /// Case-insensitive prefix.
    starts_with: Option<String>,
    /// `true`: the field has no value; `false`: it has one.
    is_null: Option<bool>,
    and: Option<Vec<RecordFilter>>,
    or: Option<Vec<RecordFilter>>,
    not: Option<Box<RecordFilter>>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum SortDirection {
    #[default]
    Asc,
    Desc,
}

/// One key of a list's order; records without a value come last either way, and creation
/// order breaks ties.
#[derive(InputObject, Serialize)]
pub(crate) struct RecordOrder {
    /// A field as in `RecordFilter.field`; list fields cannot order.
    field: String,
    #[graphql(default)]
    direction: SortDirection,
}

/// What a list field was asked for.
pub(crate) struct ListArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub include_archived: Option<bool>,
    pub filter: Option<RecordFilter>,
    pub order_by: Option<Vec<RecordOrder>>,
    pub search: Option<String>,
    /// Whether the client selected `totalCount`: counting every match costs a scan of them.
    pub count: bool,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(field, message)
}

/// The field a client named, or `VALIDATION` on `argument`.
pub(crate) fn resolve_field(
    datasheet: Datasheet,
    schema: &CustomSchema,
    name: &str,
    argument: &str,
) -> Result<Field, ApiError> {
    match name {
        "createdAt" => return Ok(Field::CreatedAt),
        "updatedAt" => return Ok(Field::UpdatedAt),
        _ => {}
    }
    if let Some(custom) = schema.field(name) {
        return Ok(Field::Custom {
            key: custom.key.clone(),
            kind: custom.kind,
        });
    }
    datasheet
        .fields()
        .iter()
        .find(|spec| snake_to_camel(spec.name) == name)
        .map(Field::Data)
        .ok_or_else(|| {
            invalid(
                argument,
                format!("{} have no field `{name}`", datasheet.as_str()),
            )
        })
}

/// A comparison value in canonical form: parsed as the field's kind (so phones, dates and
/// choices compare as stored), times as RFC 3339.
fn canonical(field: &Field, raw: &str, name: &str) -> Result<String, ApiError> {
    let bad = |reason: String| invalid("filter", format!("filter on `{name}`: the value {reason}"));
    match field {
        Field::Custom { kind, .. } => match kind {
            CustomKind::Number => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(|n| n.to_string())
                .ok_or_else(|| bad("is not a number".into())),
            CustomKind::Boolean => match raw.trim().to_lowercase().as_str() {
                "true" => Ok("true".into()),
                "false" => Ok("false".into()),
                _ => Err(bad("is not `true` or `false`".into())),
            },
            CustomKind::Date => parse_date(raw)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .map_err(|e| bad(e.to_string())),
            _ => Ok(raw.trim().to_owned()),
        },
        Field::CreatedAt | Field::UpdatedAt => chrono::DateTime::parse_from_rfc3339(raw.trim())
            .map(|t| t.with_timezone(&chrono::Utc).to_rfc3339())
            .map_err(|_| bad("is not an RFC 3339 time".into())),
        Field::Data(spec) => {
            let raw = match spec.kind {
                FieldKind::Choice { .. } | FieldKind::Stage => raw.trim().to_lowercase(),
                _ => raw.to_owned(),
            };
            let kind = match spec.kind {
                // An entry of a list compares as one value of the list's kind.
                FieldKind::EmailList | FieldKind::PhoneList | FieldKind::TagList => {
                    return Ok(raw.trim().to_owned())
                }
                FieldKind::Date => {
                    return parse_date(&raw)
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .map_err(|e| bad(e.to_string()))
                }
                kind => kind,
            };
            match kind.parse(&serde_json::Value::String(raw)) {
                Ok(serde_json::Value::String(value)) => Ok(value),
                Ok(_) => Err(bad("is empty".into())),
                Err(e) => Err(bad(e.to_string())),
            }
        }
    }
}

struct Budget {
    nodes: usize,
}

fn parse_filter(
    datasheet: Datasheet,
    schema: &CustomSchema,
    input: RecordFilter,
    depth: usize,
    budget: &mut Budget,
) -> Result<Filter, ApiError> {
    budget.nodes += 1;
    if budget.nodes > MAX_FILTER_NODES || depth > MAX_FILTER_DEPTH {
        return Err(invalid(
            "filter",
            format!(
                "a filter may have at most {MAX_FILTER_NODES} nodes nested {MAX_FILTER_DEPTH} deep"
            ),
        ));
    }
    let mut parts = Vec::new();
    let operators = [
        input.eq.is_some(),
        input.neq.is_some(),
        input.in_.is_some(),
        input.gt.is_some(),
        input.gte.is_some(),
        input.lt.is_some(),
        input.lte.is_some(),
        input.contains.is_some(),
        input.starts_with.is_some(),
        input.is_null.is_some(),
    ];
    let has_operator = operators.iter().any(|o| *o);
    match (&input.field, has_operator) {
        (Some(name), true) => {
            let field = resolve_field(datasheet, schema, name, "filter")?;
            let value = |raw: &str| canonical(&field, raw, name);
            let refuse = |operator: &str| {
                Err(invalid(
                    "filter",
                    format!("`{operator}` does not apply to `{name}`"),
                ))
            };
            let mut compare = |op: Op| parts.push(Filter::Compare(field.clone(), op));
            if field.is_list() {
                for (present, operator) in [
                    (input.neq.is_some(), "neq"),
                    (input.in_.is_some(), "in"),
                    (input.gt.is_some(), "gt"),
                    (input.gte.is_some(), "gte"),
                    (input.lt.is_some(), "lt"),
                    (input.lte.is_some(), "lte"),
                ] {
                    if present {
                        return refuse(operator);
                    }
                }
            }
            if !field.is_text() {
                if input.contains.is_some() {
                    return refuse("contains");
                }
                if input.starts_with.is_some() {
                    return refuse("startsWith");
                }
            }
            if let Some(raw) = &input.eq {
                compare(Op::Eq(value(raw)?));
            }
            if let Some(raw) = &input.neq {
                compare(Op::Neq(value(raw)?));
            }
            if let Some(values) = &input.in_ {
                if values.len() > MAX_IN_VALUES {
                    return Err(invalid(
                        "filter",
                        format!("`in` takes at most {MAX_IN_VALUES} values"),
                    ));
                }
                compare(Op::In(
                    values.iter().map(|v| value(v)).collect::<Result<_, _>>()?,
                ));
            }
            for (raw, make) in [
                (&input.gt, Op::Gt as fn(String) -> Op),
                (&input.gte, Op::Gte),
                (&input.lt, Op::Lt),
                (&input.lte, Op::Lte),
            ] {
                if let Some(raw) = raw {
                    compare(make(value(raw)?));
                }
            }
            if let Some(text) = &input.contains {
                compare(Op::Contains(text.trim().to_owned()));
            }
            if let Some(text) = &input.starts_with {
                compare(Op::StartsWith(text.trim().to_owned()));
            }
            if let Some(is_null) = input.is_null {
                compare(Op::IsNull(is_null));
            }
        }
        (Some(name), false) => {
            return Err(invalid(
                "filter",
                format!("the filter on `{name}` has no operator"),
            ))
        }
        (None, true) => return Err(invalid("filter", "an operator needs a `field` to apply to")),
        (None, false) => {}
    }
    if let Some(all) = input.and {
        let all = all
            .into_iter()
            .map(|f| parse_filter(datasheet, schema, f, depth + 1, budget))
            .collect::<Result<Vec<_>, _>>()?;
        parts.push(Filter::And(all));
    }
    if let Some(any) = input.or {
        let any = any
            .into_iter()
            .map(|f| parse_filter(datasheet, schema, f, depth + 1, budget))
            .collect::<Result<Vec<_>, _>>()?;
        parts.push(Filter::Or(any));
    }
    if let Some(inner) = input.not {
        parts.push(Filter::Not(Box::new(parse_filter(
            datasheet,
            schema,
            *inner,
            depth + 1,
            budget,
        )?)));
    }
    Ok(match parts.len() {
        1 => parts.remove(0),
        _ => Filter::And(parts),
    })
}

/// Validates a list request against `datasheet`.
pub(crate) fn record_query(
    datasheet: Datasheet,
    schema: &CustomSchema,
    args: ListArgs,
) -> Result<RecordQuery, ApiError> {
    let first = page_size(args.first)?;
    let order_by = args.order_by.unwrap_or_default();
    if order_by.len() > MAX_ORDER_KEYS {
        return Err(invalid(
            "orderBy",
            format!("order by at most {MAX_ORDER_KEYS} fields"),
        ));
    }
    let order = order_by
        .into_iter()
        .map(|key| {
            let field = resolve_field(datasheet, schema, &key.field, "orderBy")?;
            if field.is_list() {
                return Err(invalid(
                    "orderBy",
                    format!("`{}` is a list and cannot order", key.field),
                ));
            }
            Ok(OrderKey {
                field,
                direction: match key.direction {
                    SortDirection::Asc => Direction::Asc,
                    SortDirection::Desc => Direction::Desc,
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let search = args.search.filter(|s| !s.trim().is_empty());
    if search
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_SEARCH)
    {
        return Err(invalid(
            "search",
            format!("the search must have at most {MAX_SEARCH} characters"),
        ));
    }
    let filter = args
        .filter
        .map(|f| parse_filter(datasheet, schema, f, 0, &mut Budget { nodes: 0 }))
        .transpose()?;
    let after = args
        .after
        .map(|raw| {
            RecordCursor::decode(&raw)
                .ok_or_else(|| invalid("after", "`after` is not a valid cursor"))
        })
        .transpose()?;
    Ok(RecordQuery {
        datasheet,
        include_archived: args.include_archived.unwrap_or(false),
        filter,
        order,
        search,
        first,
        after,
        count: args.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_records_no_value_typed_into_a_filter_or_a_search() {
        let typed = |operator: &str| Some(format!("typed-{operator}"));
        let leaf = RecordFilter {
            field: Some("lastName".into()),
            eq: typed("eq"),
            neq: typed("neq"),
            in_: Some(vec!["typed-in".into()]),
            gt: typed("gt"),
            gte: typed("gte"),
            lt: typed("lt"),
            lte: typed("lte"),
            contains: typed("contains"),
            starts_with: typed("startsWith"),
            is_null: Some(false),
            ..RecordFilter::default()
        };
        let filter = RecordFilter {
            and: Some(vec![leaf]),
            not: Some(Box::new(RecordFilter {
                field: Some("email".into()),
                eq: typed("not"),
                ..RecordFilter::default()
            })),
            ..RecordFilter::default()
        };
        let arguments = serde_json::json!({ "filter": filter, "search": "typed-search" });
        let kept = crate::service::exports::records::withhold_values(arguments).to_string();
        assert!(!kept.contains("typed-"), "{kept}");
        assert!(
            kept.contains("lastName") && kept.contains("email"),
            "{kept}"
        );
    }
}
