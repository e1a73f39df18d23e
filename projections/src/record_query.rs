//! Lists of records with filters, an order and full-text search, paged by keyset cursors.
//!
//! The caller (the API) validates field names against the datasheet and parses values into
//! canonical form; this module only turns a [`RecordQuery`] into SQL. Field names that reach
//! SQL text are the datasheet's own `&'static str` names, never client input; every value is a
//! bind parameter.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custos_domain::{CustomKind, Datasheet, FieldKind, FieldSpec};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::page::MAX_PAGE;
use crate::records::{RecordRow, RECORD_COLUMNS};

/// What a filter or an order can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A built-in field of the datasheet.
    Data(&'static FieldSpec),
    /// A custom field: its key (checked to be `[a-z][a-z0-9_]*`) and kind.
    Custom {
        key: String,
        kind: CustomKind,
    },
    CreatedAt,
    UpdatedAt,
}

impl Field {
    /// Whether the field holds a list (compared element by element, never ordered).
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            Field::Data(FieldSpec {
                kind: FieldKind::EmailList | FieldKind::PhoneList | FieldKind::TagList,
                ..
            }) | Field::Custom {
                kind: CustomKind::MultipleChoice,
                ..
            }
        )
    }

    /// Whether the field is compared as text (`contains`, `startsWith` make sense).
    pub fn is_text(&self) -> bool {
        match self {
            Field::Data(spec) => !matches!(spec.kind, FieldKind::Date),
            Field::Custom { kind, .. } => matches!(
                kind,
                CustomKind::Text
                    | CustomKind::LongText
                    | CustomKind::SingleChoice
                    | CustomKind::MultipleChoice
            ),
            Field::CreatedAt | Field::UpdatedAt => false,
        }
    }

    /// Whether the field's stored value is a JSON string (so equality is containment).
    fn is_stored_as_text(&self) -> bool {
        match self {
            Field::Data(_) => !self.is_list(),
            Field::Custom { kind, .. } => matches!(
                kind,
                CustomKind::Text
                    | CustomKind::LongText
                    | CustomKind::SingleChoice
                    | CustomKind::Date
            ),
            Field::CreatedAt | Field::UpdatedAt => false,
        }
    }

    /// The key of the field's value in `records.fields`.
    pub fn json_key(&self) -> String {
        match self {
            Field::Data(spec) => spec.name.to_owned(),
            Field::Custom { key, .. } => {
                // Keys are checked when defined; filtering keeps SQL text safe regardless.
                let key: String = key
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                format!("{}{key}", custos_domain::custom_field::CUSTOM_PREFIX)
            }
            Field::CreatedAt => "created_at".to_owned(),
            Field::UpdatedAt => "updated_at".to_owned(),
        }
    }

    /// The SQL expression of the field's value (`NULL` when it has none). Dates compare as
    /// their canonical `YYYY-MM-DD` text; times as `timestamptz`; custom numbers and booleans
    /// as themselves.
    fn sql(&self) -> String {
        match self {
            Field::CreatedAt => "created_at".to_owned(),
            Field::UpdatedAt => "updated_at".to_owned(),
            Field::Custom {
                kind: CustomKind::Number,
                ..
            } => format!("((fields->>'{}')::numeric)", self.json_key()),
            Field::Custom {
                kind: CustomKind::Boolean,
                ..
            } => format!("((fields->>'{}')::boolean)", self.json_key()),
            _ => format!("(fields->>'{}')", self.json_key()),
        }
    }

    /// The SQL expression lists are ordered by: text case-insensitively (so `carter` sorts
    /// with `Carter`), everything else as compared.
    fn order_sql(&self) -> String {
        match self {
            Field::Data(FieldSpec {
                kind:
                    FieldKind::PersonName
                    | FieldKind::Email
                    | FieldKind::ShortText
                    | FieldKind::LongText { .. },
                ..
            })
            | Field::Custom {
                kind: CustomKind::Text | CustomKind::LongText,
                ..
            } => format!("lower{}", self.sql()),
            _ => self.sql(),
        }
    }

    /// How a bound value is cast to compare with [`Field::sql`].
    fn cast(&self) -> &'static str {
        match self {
            Field::CreatedAt | Field::UpdatedAt => "::timestamptz",
            Field::Custom {
                kind: CustomKind::Number,
                ..
            } => "::numeric",
            Field::Custom {
                kind: CustomKind::Boolean,
                ..
            } => "::boolean",
            _ => "::text",
        }
    }
}

/// A comparison on one field; values are canonical text (dates `YYYY-MM-DD`, times RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq(String),
    Neq(String),
    In(Vec<String>),
    Gt(String),
    Gte(String),
    Lt(String),
    Lte(String),
    /// Case-insensitive substring.
    Contains(String),
    /// Case-insensitive prefix.
    StartsWith(String),
    IsNull(bool),
}

impl Op {
    /// The operator as the API names it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Eq(_) => "eq",
            Op::Neq(_) => "neq",
            Op::In(_) => "in",
            Op::Gt(_) => "gt",
            Op::Gte(_) => "gte",
            Op::Lt(_) => "lt",
            Op::Lte(_) => "lte",
            Op::Contains(_) => "contains",
            Op::StartsWith(_) => "startsWith",
            Op::IsNull(_) => "isNull",
        }
    }
}

/// A filter: comparisons combined with and, or, not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Compare(Field, Op),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Asc,
    Desc,
}

/// One key of an order; the record id always breaks ties last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub field: Field,
    pub direction: Direction,
}

/// A position in an ordered list: the order's key values of the last row seen and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCursor {
    /// The order the cursor belongs to, so a cursor of another order is refused.
    order: String,
    keys: Vec<Option<String>>,
    id: Uuid,
}

impl RecordCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(raw: &str) -> Option<Self> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw).ok()?).ok()
    }
}

/// A list request.
#[derive(Debug, Clone)]
pub struct RecordQuery {
    pub datasheet: Datasheet,
    pub include_archived: bool,
    pub filter: Option<Filter>,
    pub order: Vec<OrderKey>,
    /// Words that must each start a word of the record's names, emails, company or notes.
    pub search: Option<String>,
    /// Which page: the first `n` after a cursor, or the last `n` before one.
    pub window: Window,
    /// Whether to count every match (a scan of them all); the page's total is 0 otherwise.
    pub count: bool,
}

/// The page of a list to answer, Relay's `first`/`after` or `last`/`before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// The first `first` records after `after` (from the start without one).
    First {
        first: i64,
        after: Option<RecordCursor>,
    },
    /// The last `last` records before `before` (up to the end without one), in list order.
    Last {
        last: i64,
        before: Option<RecordCursor>,
    },
}

impl RecordQuery {
    /// Whether the page starts at a client's cursor.
    pub fn window_has_cursor(&self) -> bool {
        matches!(
            self.window,
            Window::First { after: Some(_), .. }
                | Window::Last {
                    before: Some(_),
                    ..
                }
        )
    }
}

impl Window {
    /// The first page of `size` records.
    pub fn first(size: i64) -> Self {
        Window::First {
            first: size,
            after: None,
        }
    }
}

/// One page of a list: each row with its cursor, whether records come before and after it,
/// and how many match in all when asked for (0 otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordPage {
    pub items: Vec<(String, RecordRow)>,
    pub has_previous_page: bool,
    pub has_next_page: bool,
    pub total_count: i64,
}

/// Why a query cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the cursor belongs to another order or filter")]
    ForeignCursor,
}

fn signature(order: &[OrderKey]) -> String {
    order
        .iter()
        .map(|key| {
            let direction = match key.direction {
                Direction::Asc => "asc",
                Direction::Desc => "desc",
            };
            format!("{}:{direction}", key.field.json_key())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `%` and `_` are wildcards in LIKE: matched literally here.
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The tsquery text for search words: each word (letters and digits) a prefix, all required.
/// `None` when the search has no word.
pub fn search_terms(search: &str) -> Option<String> {
    let words: Vec<String> = search
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(16)
        .map(|w| format!("{}:*", w.to_lowercase()))
        .collect();
    (!words.is_empty()).then(|| words.join(" & "))
}

fn push_compare(query: &mut QueryBuilder<'_, Postgres>, field: &Field, op: &Op) {
    if field.is_list() {
        let key = field.json_key();
        let any = |query: &mut QueryBuilder<'_, Postgres>, condition: &str| {
            query.push(format!(
                "EXISTS (SELECT 1 FROM jsonb_array_elements_text(coalesce(fields->'{key}', '[]')) AS e(v) WHERE {condition}"
            ));
        };
        match op {
            Op::Eq(value) => {
                any(query, "lower(e.v) = lower(");
                query.push_bind(value.clone()).push("))");
            }
            Op::Contains(value) => {
                any(query, "e.v ILIKE ");
                query
                    .push_bind(format!("%{}%", like_escaped(value)))
                    .push(")");
            }
            Op::StartsWith(value) => {
                any(query, "e.v ILIKE ");
                query
                    .push_bind(format!("{}%", like_escaped(value)))
                    .push(")");
            }
            Op::IsNull(true) => {
                query.push(format!("NOT (fields ? '{key}')"));
            }
            Op::IsNull(false) => {
                query.push(format!("(fields ? '{key}')"));
            }
            // The API refuses other operators on lists.
            _ => {
                query.push("false");
            }
        }
        return;
    }
    let sql = field.sql();
    let cast = field.cast();
    let binary = |query: &mut QueryBuilder<'_, Postgres>, operator: &str, value: &String| {
        query
            .push(format!("{sql} {operator} "))
            .push_bind(value.clone())
            .push(cast);
    };
    match op {
        // Equality on a text value is containment, which the GIN index on `fields` serves.
        Op::Eq(value) if field.is_stored_as_text() => {
            query
                .push(format!(
                    "fields @> jsonb_build_object('{}', ",
                    field.json_key()
                ))
                .push_bind(value.clone())
                .push("::text)");
        }
        Op::Eq(value) => binary(query, "=", value),
        Op::Neq(value) => binary(query, "IS DISTINCT FROM", value),
        Op::Gt(value) => binary(query, ">", value),
        Op::Gte(value) => binary(query, ">=", value),
        Op::Lt(value) => binary(query, "<", value),
        Op::Lte(value) => binary(query, "<=", value),
        Op::In(values) => {
            query
                .push(format!("{sql} = ANY("))
                .push_bind(values.clone())
                .push(format!("{cast}[])"));
        }
        Op::Contains(value) => {
            query
                .push(format!("{sql} ILIKE "))
                .push_bind(format!("%{}%", like_escaped(value)));
        }
        Op::StartsWith(value) => {
            query
                .push(format!("{sql} ILIKE "))
                .push_bind(format!("{}%", like_escaped(value)));
        }
        Op::IsNull(true) => {
            query.push(format!("{sql} IS NULL"));
        }
        Op::IsNull(false) => {
            query.push(format!("{sql} IS NOT NULL"));
        }
    }
}

/// `not` makes its operand null-safe (a missing value is "false", never unknown), so that it
/// inverts exactly.
fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &Filter) {
    match filter {
        // A comparison on a missing value is NULL, which a WHERE clause treats as false; only
        // `not` needs it made false first (below). Left bare, comparisons can use indexes.
        Filter::Compare(field, op) => push_compare(query, field, op),
        Filter::And(parts) | Filter::Or(parts) => {
            let (joiner, empty) = match filter {
                Filter::And(_) => (" AND ", "true"),
                _ => (" OR ", "false"),
            };
            if parts.is_empty() {
                query.push(empty);
                return;
            }
            query.push("(");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    query.push(joiner);
                }
                push_filter(query, part);
            }
            query.push(")");
        }
        Filter::Not(inner) => {
            query.push("NOT coalesce((");
            push_filter(query, inner);
            query.push("), false)");
        }
    }
}

/// The conditions every page and the total share.
fn push_where(query: &mut QueryBuilder<'_, Postgres>, request: &RecordQuery) {
    query
        .push(" WHERE datasheet = ")
        .push_bind(request.datasheet.as_str());
    if !request.include_archived {
        query.push(" AND NOT archived AND erased_at IS NULL");
    }
    if let Some(terms) = request.search.as_deref().and_then(search_terms) {
        query
            .push(" AND search @@ to_tsquery('simple', ")
            .push_bind(terms)
            .push(")");
    }
    if let Some(filter) = &request.filter {
        query.push(" AND ");
        push_filter(query, filter);
    }
}

/// One condition of the keyset comparison.
#[derive(Clone)]
enum Cond {
    IsNull(String),
    IsNotNull(String),
    Compare {
        sql: String,
        operator: &'static str,
        value: String,
        cast: &'static str,
    },
    /// The id comes after (`>`) or, walking backwards, before (`<`) the cursor's.
    Id(&'static str, Uuid),
}

fn push_cond(query: &mut QueryBuilder<'_, Postgres>, cond: &Cond) {
    match cond {
        Cond::IsNull(sql) => {
            query.push(format!("{sql} IS NULL"));
        }
        Cond::IsNotNull(sql) => {
            query.push(format!("{sql} IS NOT NULL"));
        }
        Cond::Compare {
            sql,
            operator,
            value,
            cast,
        } => {
            query
                .push(format!("{sql} {operator} "))
                .push_bind(value.clone())
                .push(*cast);
        }
        Cond::Id(operator, id) => {
            query.push(format!("id {operator} ")).push_bind(*id);
        }
    }
}

/// Rows after `cursor` in the order: lexicographic over, per key, "has a value" (rows with
/// one come first) then the value in its direction, then the id. `backward` walks the order
/// the other way (rows before the cursor, nearest first): directions flip, and rows without a
/// value come first.
fn push_after(
    query: &mut QueryBuilder<'_, Postgres>,
    order: &[OrderKey],
    cursor: &RecordCursor,
    backward: bool,
) {
    let mut terms: Vec<Vec<Cond>> = Vec::new();
    let mut equal: Vec<Cond> = Vec::new();
    for (key, value) in order.iter().zip(&cursor.keys) {
        let sql = key.field.order_sql();
        match value {
            // Walking forward from a row without a value, only rows without one follow;
            // walking backward, every row with a value does too.
            None => {
                if backward {
                    terms.push([equal.clone(), vec![Cond::IsNotNull(sql.clone())]].concat());
                }
                equal.push(Cond::IsNull(sql));
            }
            Some(value) => {
                let compare = |operator| Cond::Compare {
                    sql: sql.clone(),
                    operator,
                    value: value.clone(),
                    cast: key.field.cast(),
                };
                // Rows without a value come after every row with one.
                if !backward {
                    terms.push([equal.clone(), vec![Cond::IsNull(sql.clone())]].concat());
                }
                let operator = match (key.direction, backward) {
                    (Direction::Asc, false) | (Direction::Desc, true) => ">",
                    (Direction::Desc, false) | (Direction::Asc, true) => "<",
                };
                terms.push([equal.clone(), vec![compare(operator)]].concat());
                equal.push(compare("="));
            }
        }
    }
    let id = if backward { "<" } else { ">" };
    terms.push([equal, vec![Cond::Id(id, cursor.id)]].concat());
    query.push(" AND (");
    for (i, term) in terms.iter().enumerate() {
        if i > 0 {
            query.push(" OR ");
        }
        query.push("(");
        for (j, cond) in term.iter().enumerate() {
            if j > 0 {
                query.push(" AND ");
            }
            push_cond(query, cond);
        }
        query.push(")");
    }
    query.push(")");
}

/// The ORDER BY of a list, or of its reverse (walking backward).
fn push_order(query: &mut QueryBuilder<'_, Postgres>, order: &[OrderKey], backward: bool) {
    query.push(" ORDER BY ");
    for key in order {
        let direction = match (key.direction, backward) {
            (Direction::Asc, false) => "ASC NULLS LAST",
            (Direction::Desc, false) => "DESC NULLS LAST",
            (Direction::Asc, true) => "DESC NULLS FIRST",
            (Direction::Desc, true) => "ASC NULLS FIRST",
        };
        let sql = key.field.order_sql();
        query.push(format!("{sql} {direction}, "));
    }
    query.push(if backward { "id DESC" } else { "id" });
}

/// One page of records, with each row's cursor, and the total that match when asked for.
pub async fn list(
    db: &mut PgConnection,
    request: &RecordQuery,
) -> Result<RecordPage, QueryListError> {
    let (size, cursor, backward) = match &request.window {
        Window::First { first, after } => (*first, after.as_ref(), false),
        Window::Last { last, before } => (*last, before.as_ref(), true),
    };
    let size = size.clamp(1, MAX_PAGE);
    let order_signature = signature(&request.order);
    if let Some(cursor) = cursor {
        if cursor.order != order_signature || cursor.keys.len() != request.order.len() {
            return Err(QueryListError::Query(QueryError::ForeignCursor));
        }
    }
    // The cursor's key values come from the database itself, exactly as it compares them.
    let keys: Vec<String> = request
        .order
        .iter()
        .map(|key| format!("({})::text", key.field.order_sql()))
        .collect();
    let select = format!(
        "SELECT {RECORD_COLUMNS}, ARRAY[{}]::text[] AS order_keys",
        keys.join(", ")
    );
    let mut query = if request.search.as_deref().and_then(search_terms).is_some() {
        // A search matches few records, but the planner cannot tell and would rather walk an
        // ordered index and test every row: the matches are found through the search index
        // first, then ordered.
        let mut query = QueryBuilder::new("WITH matches AS MATERIALIZED (SELECT * FROM records");
        push_where(&mut query, request);
        query.push(format!(") {select} FROM matches WHERE true"));
        query
    } else {
        let mut query = QueryBuilder::new(format!("{select} FROM records"));
        push_where(&mut query, request);
        query
    };
    if let Some(cursor) = cursor {
        push_after(&mut query, &request.order, cursor, backward);
    }
    push_order(&mut query, &request.order, backward);
    query.push(" LIMIT ").push_bind(size + 1);
    #[derive(sqlx::FromRow)]
    struct Keyed {
        #[sqlx(flatten)]
        row: RecordRow,
        order_keys: Vec<Option<String>>,
    }
    let mut rows: Vec<Keyed> = query
        .build_query_as()
        .persistent(false)
        .fetch_all(&mut *db)
        .await?;
    // One more row than the page says that more lie beyond it; a cursor, that some lie
    // behind (its own row at least, unless it has gone since).
    let more = rows.len() as i64 > size;
    rows.truncate(size as usize);
    if backward {
        rows.reverse();
    }
    let (has_previous_page, has_next_page) = match backward {
        false => (cursor.is_some(), more),
        true => (more, cursor.is_some()),
    };

    let total_count: i64 = if request.count {
        let mut count = QueryBuilder::new("SELECT count(*) FROM records");
        push_where(&mut count, request);
        count
            .build_query_scalar()
            .persistent(false)
            .fetch_one(&mut *db)
            .await?
    } else {
        0
    };
    let items = rows
        .into_iter()
        .map(|keyed| {
            let cursor = RecordCursor {
                order: order_signature.clone(),
                keys: keyed.order_keys,
                id: keyed.row.id,
            };
            (cursor.encode(), keyed.row)
        })
        .collect();
    Ok(RecordPage {
        items,
        has_previous_page,
        has_next_page,
        total_count,
    })
}

/// Groups of fewer records than this have their members recorded as read by a report: a
/// small group's value can single a person out (grouped by email, every group is one person).
pub const SMALL_GROUP: i64 = 10;

/// One group of a report.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupCount {
    pub value: Option<String>,
    pub count: i64,
    /// The records in the group when it is smaller than [`SMALL_GROUP`]; none otherwise.
    pub members: Vec<Uuid>,
}

/// How many records that match `request` (its filter, search and archive flag; not its
/// order or page) have each value of `field`; a list field counts each entry, and records
/// without a value count under `None`. Largest groups first.
pub async fn group_counts(
    db: &mut PgConnection,
    request: &RecordQuery,
    field: &Field,
) -> sqlx::Result<Vec<GroupCount>> {
    let members =
        format!("CASE WHEN count(*) < {SMALL_GROUP} THEN array_agg(id) ELSE '{{}}' END AS members");
    let mut query = if field.is_list() {
        QueryBuilder::new(format!(
            "SELECT e.v AS value, count(*) AS count, {members} FROM records
             LEFT JOIN LATERAL jsonb_array_elements_text(coalesce(fields->'{}', '[]')) AS e(v) ON true",
            field.json_key()
        ))
    } else {
        QueryBuilder::new(format!(
            "SELECT ({})::text AS value, count(*) AS count, {members} FROM records",
            field.sql()
        ))
    };
    push_where(&mut query, request);
    query.push(" GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST");
    query.build_query_as().persistent(false).fetch_all(db).await
}

/// The ids of every record that matches `request`, in its order (its page is ignored).
pub async fn ids(db: &mut PgConnection, request: &RecordQuery) -> sqlx::Result<Vec<Uuid>> {
    let mut query = QueryBuilder::new("SELECT id FROM records");
    push_where(&mut query, request);
    push_order(&mut query, &request.order, false);
    query
        .build_query_scalar()
        .persistent(false)
        .fetch_all(db)
        .await
}

/// How many records match `request` (its filter, search and archive flag).
pub async fn count(db: &mut PgConnection, request: &RecordQuery) -> sqlx::Result<i64> {
    let mut count = QueryBuilder::new("SELECT count(*) FROM records");
    push_where(&mut count, request);
    count
        .build_query_scalar()
        .persistent(false)
        .fetch_one(db)
        .await
}

/// A list failure: a bad request or the database.
#[derive(Debug, thiserror::Error)]
pub enum QueryListError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_become_required_prefixes() {
        assert_eq!(search_terms("Gra hop"), Some("gra:* & hop:*".into()));
        assert_eq!(
            search_terms("lin@acme.example"),
            Some("lin:* & acme:* & example:*".into())
        );
        assert_eq!(search_terms(" !:*& "), None);
        assert_eq!(search_terms("o'brien"), Some("o:* & brien:*".into()));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = RecordCursor {
            order: "last_name:asc".into(),
            keys: vec![Some("O'Hara".into())],
            id: Uuid::nil(),
        };
        assert_eq!(RecordCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(RecordCursor::decode("not a cursor"), None);
    }
}
