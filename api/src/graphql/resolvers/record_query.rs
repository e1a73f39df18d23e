//! The filter, order and search arguments of record lists, validated against the datasheet
//! and turned into a [`RecordQuery`].

use custos_domain::custom_field::CUSTOM_PREFIX;
use custos_domain::{parse_date, CustomKind, CustomSchema, Datasheet, FieldKind};
use custos_projections::page::MAX_PAGE;
use custos_projections::record_query::{
    Direction, Field, Filter, Op, OrderKey, RecordCursor, RecordQuery, Window,
};

use crate::error::snake_to_camel;
use crate::error::ApiError;
use crate::graphql::pagination::{page_size, page_size_within};
use crate::graphql::types::filters::{
    CustomFieldFilter, FieldFilter, OrderChoice, SortDirection, TypedFilter, TypedOrder,
};
use crate::graphql::types::records::{RecordsFilter, RecordsOrder};

/// Bounds on one list request, so a filter cannot buy unbounded work.
const MAX_FILTER_NODES: usize = 100;
const MAX_FILTER_DEPTH: usize = 8;
const MAX_IN_VALUES: usize = 100;
const MAX_ORDER_KEYS: usize = 3;
const MAX_SEARCH: usize = 200;

/// What a list field was asked for.
pub(crate) struct ListArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
    pub include_archived: Option<bool>,
    pub filter: Option<RecordsFilter>,
    pub order_by: Option<RecordsOrder>,
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

/// A built-in field by the domain's name (the generated inputs name only those).
fn data_field(datasheet: Datasheet, name: &str) -> Result<Field, ApiError> {
    match name {
        "created_at" => return Ok(Field::CreatedAt),
        "updated_at" => return Ok(Field::UpdatedAt),
        _ => {}
    }
    datasheet
        .fields()
        .iter()
        .find(|spec| spec.name == name)
        .map(Field::Data)
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "{} have no field {name}",
                datasheet.as_str()
            ))
        })
}

/// A custom field by its key, or `VALIDATION` on `argument`.
fn custom_field(
    datasheet: Datasheet,
    schema: &CustomSchema,
    key: &str,
    argument: &str,
) -> Result<Field, ApiError> {
    let custom = schema
        .field(&format!("{CUSTOM_PREFIX}{key}"))
        .ok_or_else(|| {
            invalid(
                argument,
                format!("{} have no custom field `{key}`", datasheet.as_str()),
            )
        })?;
    Ok(Field::Custom {
        key: custom.key.clone(),
        kind: custom.kind,
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
        // The database stores years 1 to 9999 (it has no year 0): others are refused here.
        Field::CreatedAt | Field::UpdatedAt => chrono::DateTime::parse_from_rfc3339(raw.trim())
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
            .filter(|t| (1..=9999).contains(&chrono::Datelike::year(t)))
            .map(|t| t.to_rfc3339())
            .ok_or_else(|| bad("is not an RFC 3339 time within the years 1 to 9999".into())),
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

impl Budget {
    /// Counts one more node `depth` deep, or refuses the filter.
    fn spend(&mut self, depth: usize) -> Result<(), ApiError> {
        self.nodes += 1;
        if self.nodes > MAX_FILTER_NODES || depth > MAX_FILTER_DEPTH {
            return Err(invalid(
                "filter",
                format!(
                    "a filter may have at most {MAX_FILTER_NODES} nodes nested {MAX_FILTER_DEPTH} deep"
                ),
            ));
        }
        Ok(())
    }
}

/// One field's conditions, checked against the field and in canonical form, into `parts`.
fn conditions(
    field: Field,
    name: &str,
    ops: Vec<Op>,
    parts: &mut Vec<Filter>,
) -> Result<(), ApiError> {
    let refuse = |operator: &str| {
        Err(invalid(
            "filter",
            format!("`{operator}` does not apply to `{name}`"),
        ))
    };
    let value = |raw: String| canonical(&field, &raw, name);
    for op in ops {
        let op = match op {
            Op::Neq(_) | Op::In(_) | Op::Gt(_) | Op::Gte(_) | Op::Lt(_) | Op::Lte(_)
                if field.is_list() =>
            {
                return refuse(op.name())
            }
            Op::Contains(_) | Op::StartsWith(_) if !field.is_text() => return refuse(op.name()),
            Op::In(values) if values.len() > MAX_IN_VALUES => {
                return Err(invalid(
                    "filter",
                    format!("`in` takes at most {MAX_IN_VALUES} values"),
                ))
            }
            Op::Eq(raw) => Op::Eq(value(raw)?),
            Op::Neq(raw) => Op::Neq(value(raw)?),
            Op::In(values) => Op::In(values.into_iter().map(value).collect::<Result<_, _>>()?),
            Op::Gt(raw) => Op::Gt(value(raw)?),
            Op::Gte(raw) => Op::Gte(value(raw)?),
            Op::Lt(raw) => Op::Lt(value(raw)?),
            Op::Lte(raw) => Op::Lte(value(raw)?),
            Op::Contains(text) => Op::Contains(text.trim().to_owned()),
            Op::StartsWith(text) => Op::StartsWith(text.trim().to_owned()),
            Op::IsNull(is_null) => Op::IsNull(is_null),
        };
        parts.push(Filter::Compare(field.clone(), op));
    }
    Ok(())
}

/// A custom field's condition: the filter of its kind, exactly one.
fn custom_conditions(
    datasheet: Datasheet,
    schema: &CustomSchema,
    input: CustomFieldFilter,
    parts: &mut Vec<Filter>,
) -> Result<(), ApiError> {
    let field = custom_field(datasheet, schema, &input.key, "filter")?;
    let Field::Custom { kind, .. } = &field else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "a custom field that is not"
        )));
    };
    let expected = match kind {
        CustomKind::Text | CustomKind::LongText | CustomKind::SingleChoice => "text",
        CustomKind::Number => "number",
        CustomKind::Date => "date",
        CustomKind::Boolean => "boolean",
        CustomKind::MultipleChoice => "choices",
    };
    let given: Vec<(&str, Vec<Op>)> = [
        ("text", input.text.map(FieldFilter::ops)),
        ("number", input.number.map(FieldFilter::ops)),
        ("date", input.date.map(FieldFilter::ops)),
        ("boolean", input.boolean.map(FieldFilter::ops)),
        ("choices", input.choices.map(FieldFilter::ops)),
    ]
    .into_iter()
    .filter_map(|(name, ops)| ops.map(|ops| (name, ops)))
    .collect();
    let name = format!("custom.{}", input.key);
    match given.as_slice() {
        [(filter, _)] if *filter == expected => {}
        _ => {
            return Err(invalid(
                "filter",
                format!("filter `{name}` with `{expected}`, and nothing else"),
            ))
        }
    }
    let (_, ops) = given.into_iter().next().unwrap_or_default();
    conditions(field, &name, ops, parts)
}

fn parse_filter<F: TypedFilter>(
    datasheet: Datasheet,
    schema: &CustomSchema,
    input: F,
    depth: usize,
    budget: &mut Budget,
) -> Result<Filter, ApiError> {
    budget.spend(depth)?;
    let split = input.split();
    let mut parts = Vec::new();
    for (name, ops) in split.fields {
        conditions(
            data_field(datasheet, name)?,
            &snake_to_camel(name),
            ops,
            &mut parts,
        )?;
    }
    if let Some(ops) = split.created_at {
        conditions(Field::CreatedAt, "createdAt", ops, &mut parts)?;
    }
    if let Some(ops) = split.updated_at {
        conditions(Field::UpdatedAt, "updatedAt", ops, &mut parts)?;
    }
    for custom in split.custom.into_iter().flatten() {
        budget.spend(depth + 1)?;
        custom_conditions(datasheet, schema, custom, &mut parts)?;
    }
    let mut nested = |filters: Vec<F>| {
        filters
            .into_iter()
            .map(|f| parse_filter(datasheet, schema, f, depth + 1, budget))
            .collect::<Result<Vec<_>, _>>()
    };
    if let Some(all) = split.and {
        parts.push(Filter::And(nested(all)?));
    }
    if let Some(any) = split.or {
        parts.push(Filter::Or(nested(any)?));
    }
    if let Some(inner) = split.not {
        let inner = nested(vec![*inner])?.remove(0);
        parts.push(Filter::Not(Box::new(inner)));
    }
    Ok(match parts.len() {
        1 => parts.remove(0),
        _ => Filter::And(parts),
    })
}

/// A datasheet's filter, refused when it is another datasheet's.
fn records_filter(
    datasheet: Datasheet,
    schema: &CustomSchema,
    filter: RecordsFilter,
) -> Result<Filter, ApiError> {
    let budget = &mut Budget { nodes: 0 };
    let (filtered, filter) = match filter {
        RecordsFilter::Employees(f) => (
            Datasheet::Employees,
            parse_filter(datasheet, schema, *f, 0, budget),
        ),
        RecordsFilter::Contacts(f) => (
            Datasheet::Contacts,
            parse_filter(datasheet, schema, *f, 0, budget),
        ),
        RecordsFilter::Applicants(f) => (
            Datasheet::Applicants,
            parse_filter(datasheet, schema, *f, 0, budget),
        ),
    };
    if filtered != datasheet {
        return Err(invalid(
            "filter",
            format!(
                "the filter is on {}, the datasheet is {}",
                filtered.as_str(),
                datasheet.as_str()
            ),
        ));
    }
    filter
}

fn order_keys<O: TypedOrder>(
    datasheet: Datasheet,
    schema: &CustomSchema,
    keys: Vec<O>,
) -> Result<Vec<OrderKey>, ApiError> {
    if keys.len() > MAX_ORDER_KEYS {
        return Err(invalid(
            "orderBy",
            format!("order by at most {MAX_ORDER_KEYS} fields"),
        ));
    }
    keys.into_iter()
        .map(|key| {
            let (field, direction) = match key.key() {
                OrderChoice::Field(name, direction) => (data_field(datasheet, name)?, direction),
                OrderChoice::Custom(custom) => (
                    custom_field(datasheet, schema, &custom.key, "orderBy")?,
                    custom.direction,
                ),
            };
            if field.is_list() {
                return Err(invalid(
                    "orderBy",
                    format!("`{}` holds a list and cannot order", field.json_key()),
                ));
            }
            Ok(OrderKey {
                field,
                direction: match direction {
                    SortDirection::Asc => Direction::Asc,
                    SortDirection::Desc => Direction::Desc,
                },
            })
        })
        .collect()
}

/// A datasheet's order, refused when it is another datasheet's.
fn records_order(
    datasheet: Datasheet,
    schema: &CustomSchema,
    order: RecordsOrder,
) -> Result<Vec<OrderKey>, ApiError> {
    let (ordered, keys) = match order {
        RecordsOrder::Employees(keys) => {
            (Datasheet::Employees, order_keys(datasheet, schema, keys))
        }
        RecordsOrder::Contacts(keys) => (Datasheet::Contacts, order_keys(datasheet, schema, keys)),
        RecordsOrder::Applicants(keys) => {
            (Datasheet::Applicants, order_keys(datasheet, schema, keys))
        }
    };
    if ordered != datasheet {
        return Err(invalid(
            "orderBy",
            format!(
                "the order is on {}, the datasheet is {}",
                ordered.as_str(),
                datasheet.as_str()
            ),
        ));
    }
    keys
}

fn cursor(raw: Option<String>, argument: &str) -> Result<Option<RecordCursor>, ApiError> {
    raw.map(|raw| {
        RecordCursor::decode(&raw)
            .ok_or_else(|| invalid(argument, format!("`{argument}` is not a valid cursor")))
    })
    .transpose()
}

/// Relay's arguments as a window: `first`/`after` forward, `last`/`before` backward, not
/// both.
fn window(args: &mut ListArgs) -> Result<Window, ApiError> {
    let backward = args.last.is_some() || args.before.is_some();
    if backward {
        for (given, argument) in [
            (args.first.is_some(), "first"),
            (args.after.is_some(), "after"),
        ] {
            if given {
                return Err(invalid(
                    argument,
                    format!(
                        "`{argument}` pages forward and `last`/`before` backward: give one pair"
                    ),
                ));
            }
        }
        return Ok(Window::Last {
            last: page_size_within("last", args.last, 20, MAX_PAGE as i32)?,
            before: cursor(args.before.take(), "before")?,
        });
    }
    Ok(Window::First {
        first: page_size(args.first)?,
        after: cursor(args.after.take(), "after")?,
    })
}

/// Validates a list request against `datasheet`.
pub(crate) fn record_query(
    datasheet: Datasheet,
    schema: &CustomSchema,
    mut args: ListArgs,
) -> Result<RecordQuery, ApiError> {
    let window = window(&mut args)?;
    let order = args
        .order_by
        .map(|order| records_order(datasheet, schema, order))
        .transpose()?
        .unwrap_or_default();
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
        .map(|f| records_filter(datasheet, schema, f))
        .transpose()?;
    Ok(RecordQuery {
        datasheet,
        include_archived: args.include_archived.unwrap_or(false),
        filter,
        order,
        search,
        window,
        count: args.count,
    })
}

#[cfg(test)]
mod tests {
    use async_graphql::{InputType, Value};

    use super::*;

    fn employees(filter: serde_json::Value) -> RecordsFilter {
        let value = Value::from_json(serde_json::json!({ "employees": filter })).unwrap();
        RecordsFilter::parse(Some(value))
            .map_err(|e| e.into_server_error(Default::default()).message)
            .unwrap()
    }

    fn parsed(filter: serde_json::Value) -> Result<Filter, ApiError> {
        records_filter(
            Datasheet::Employees,
            &CustomSchema::default(),
            employees(filter),
        )
    }

    #[test]
    fn every_operator_of_a_typed_filter_reaches_the_query_in_canonical_form() {
        let field = |name: &str| data_field(Datasheet::Employees, name).unwrap();
        let filter = parsed(serde_json::json!({
            "department": { "eq": "R&D", "in": ["Ops"], "contains": " sal ", "isNull": false },
            "startDate": { "gte": "2020-01-05", "neq": "2021-02-03" },
            "employmentType": { "in": ["FULL_TIME", "INTERN"] },
            "phone": { "eq": "+1 (555) 010-0199" },
            "createdAt": { "lt": "2026-01-02T03:04:05+02:00" },
            "not": { "managerId": { "isNull": true } },
        }))
        .unwrap();
        let compare = |name: &str, op: Op| Filter::Compare(field(name), op);
        assert_eq!(
            filter,
            Filter::And(vec![
                compare("phone", Op::Eq("+15550100199".into())),
                compare("department", Op::Eq("R&D".into())),
                compare("department", Op::In(vec!["Ops".into()])),
                compare("department", Op::Contains("sal".into())),
                compare("department", Op::IsNull(false)),
                compare(
                    "employment_type",
                    Op::In(vec!["full_time".into(), "intern".into()])
                ),
                compare("start_date", Op::Neq("2021-02-03".into())),
                compare("start_date", Op::Gte("2020-01-05".into())),
                Filter::Compare(Field::CreatedAt, Op::Lt("2026-01-02T01:04:05+00:00".into())),
                Filter::Not(Box::new(compare("manager_id", Op::IsNull(true)))),
            ])
        );
    }

    #[test]
    fn a_filter_of_another_datasheet_or_beyond_its_bounds_is_refused() {
        let value =
            Value::from_json(serde_json::json!({ "contacts": { "tags": { "eq": "x" } } })).unwrap();
        let contacts = RecordsFilter::parse(Some(value)).ok().unwrap();
        let err =
            records_filter(Datasheet::Employees, &CustomSchema::default(), contacts).unwrap_err();
        assert!(format!("{err:?}").contains("on contacts"), "{err:?}");

        let mut deep = serde_json::json!({ "lastName": { "eq": "x" } });
        for _ in 0..MAX_FILTER_DEPTH {
            deep = serde_json::json!({ "not": deep });
        }
        assert!(
            parsed(deep.clone()).is_ok(),
            "{MAX_FILTER_DEPTH} deep is allowed"
        );
        assert!(parsed(serde_json::json!({ "not": deep })).is_err());
        let many: Vec<String> = (0..=MAX_IN_VALUES).map(|i| i.to_string()).collect();
        assert!(parsed(serde_json::json!({ "department": { "in": many } })).is_err());
        assert!(parsed(serde_json::json!({ "managerId": { "eq": "not-an-id" } })).is_err());
        let unknown =
            parsed(serde_json::json!({ "custom": [{ "key": "shoe", "number": { "eq": 1 } }] }));
        assert!(unknown.is_err());
    }
}
