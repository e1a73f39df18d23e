//! Limits on the document itself, checked as soon as it is parsed, before validation: the
//! number of aliases (so one request cannot multiply a field, e.g. a login, many times over)
//! and how deep it nests. async-graphql's own depth limit counts introspection like any other
//! field, and the standard introspection query every client and code generator sends
//! (graphql-js's `getIntrospectionQuery`) is 13 levels deep; here introspection is measured by
//! graphql-js's own rule instead (`MaxIntrospectionDepthRule`): how many of `fields`,
//! `inputFields`, `interfaces` and `possibleTypes` are nested in one another, the lists that
//! make an introspection answer grow.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{
    ExecutableDocument, Field, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, ServerError, ServerResult, Variables};

/// The most aliased fields one document may contain.
pub const MAX_ALIASES: usize = 30;

/// The deepest a document may nest its fields (a field with no selection counts one), not
/// counting what is inside introspection.
pub const MAX_DEPTH: usize = 12;

/// How many introspection lists may be nested in one another (graphql-js refuses three): the
/// standard introspection query nests one.
pub(crate) const MAX_INTROSPECTION_LISTS: usize = 2;

/// Counts aliases in a selection set and everything under it (fragments once each).
fn aliases(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(field) => {
                usize::from(field.node.alias.is_some()) + aliases(&field.node.selection_set.node)
            }
            Selection::InlineFragment(fragment) => aliases(&fragment.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

fn document_aliases(document: &ExecutableDocument) -> usize {
    let operations: usize = document
        .operations
        .iter()
        .map(|(_, op)| aliases(&op.node.selection_set.node))
        .sum();
    let fragments: usize = document
        .fragments
        .values()
        .map(|f| aliases(&f.node.selection_set.node))
        .sum();
    operations + fragments
}

fn is_introspection(field: &Field) -> bool {
    matches!(field.name.node.as_str(), "__schema" | "__type")
}

fn is_introspection_list(field: &Field) -> bool {
    matches!(
        field.name.node.as_str(),
        "fields" | "inputFields" | "interfaces" | "possibleTypes"
    )
}

/// The deepest path through a selection set with fragments inlined, each field weighing what
/// `weight` says; the selection under a field `stop` names is not entered. A fragment is
/// measured once (so fragments spreading one another many times cost nothing more), and one
/// that spreads itself counts nothing more the second time (validation refuses it anyway).
struct Depth<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    measured: HashMap<&'a str, usize>,
    weight: fn(&Field) -> usize,
    stop: fn(&Field) -> bool,
}

impl<'a> Depth<'a> {
    fn new(
        document: &'a ExecutableDocument,
        weight: fn(&Field) -> usize,
        stop: fn(&Field) -> bool,
    ) -> Self {
        Depth {
            fragments: &document.fragments,
            measured: HashMap::new(),
            weight,
            stop,
        }
    }

    fn of(&mut self, set: &'a SelectionSet) -> usize {
        let mut deepest = 0;
        for item in &set.items {
            let depth = match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let below = if (self.stop)(field) {
                        0
                    } else {
                        self.of(&field.selection_set.node)
                    };
                    (self.weight)(field) + below
                }
                Selection::InlineFragment(fragment) => self.of(&fragment.node.selection_set.node),
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    match (self.measured.get(name), self.fragments.get(name)) {
                        (Some(depth), _) => *depth,
                        // An unknown fragment is validation's to refuse.
                        (None, None) => 0,
                        (None, Some(fragment)) => {
                            self.measured.insert(name, 0);
                            let depth = self.of(&fragment.node.selection_set.node);
                            self.measured.insert(name, depth);
                            depth
                        }
                    }
                }
            };
            deepest = deepest.max(depth);
        }
        deepest
    }
}

/// Every introspection field (`__schema`, `__type`) anywhere in a selection set, fragments not
/// followed (each is searched on its own).
fn introspection_fields<'a>(set: &'a SelectionSet, found: &mut Vec<&'a Field>) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) if is_introspection(&field.node) => found.push(&field.node),
            Selection::Field(field) => introspection_fields(&field.node.selection_set.node, found),
            Selection::InlineFragment(fragment) => {
                introspection_fields(&fragment.node.selection_set.node, found);
            }
            Selection::FragmentSpread(_) => {}
        }
    }
}

/// Why a document is refused, if it is: too many aliases, nested too deep, or introspection
/// lists nested too deep.
fn refusal(document: &ExecutableDocument) -> Option<String> {
    if document_aliases(document) > MAX_ALIASES {
        return Some(format!("the document has more than {MAX_ALIASES} aliases"));
    }
    let mut depth = Depth::new(document, |_| 1, is_introspection);
    for (_, operation) in document.operations.iter() {
        let levels = depth.of(&operation.node.selection_set.node);
        if levels > MAX_DEPTH {
            return Some(format!(
                "the query is nested too deep: {levels} levels, at most {MAX_DEPTH}"
            ));
        }
    }
    let mut found = Vec::new();
    for (_, operation) in document.operations.iter() {
        introspection_fields(&operation.node.selection_set.node, &mut found);
    }
    for fragment in document.fragments.values() {
        introspection_fields(&fragment.node.selection_set.node, &mut found);
    }
    let mut lists = Depth::new(
        document,
        |field| usize::from(is_introspection_list(field)),
        |_| false,
    );
    for field in found {
        let nested = lists.of(&field.selection_set.node);
        if nested > MAX_INTROSPECTION_LISTS {
            return Some(format!(
                "the introspection query nests fields, inputFields, interfaces or possibleTypes \
                 {nested} deep, at most {MAX_INTROSPECTION_LISTS}"
            ));
        }
    }
    None
}

/// Refuses documents over the limits above, before validation.
pub(crate) struct DocumentLimits;

impl ExtensionFactory for DocumentLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimits)
    }
}

#[async_trait::async_trait]
impl Extension for DocumentLimits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        match refusal(&document) {
            Some(reason) => Err(ServerError::new(reason, None)),
            None => Ok(document),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(query).expect("the test document parses")
    }

    #[test]
    fn aliases_are_counted_everywhere() {
        let document = parse(
            "query { a: me { id } b: me { x: id } ...F ... on Query { c: me { id } } } fragment F on Query { d: me { id } }",
        );
        assert_eq!(document_aliases(&document), 5);
    }

    fn depth(query: &str) -> usize {
        let document = parse(query);
        let mut depth = Depth::new(&document, |_| 1, is_introspection);
        document
            .operations
            .iter()
            .map(|(_, op)| depth.of(&op.node.selection_set.node))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn depth_counts_fields_through_fragments_and_stops_at_introspection() {
        assert_eq!(depth("{ me { id } }"), 2);
        assert_eq!(
            depth("{ a { ...F ... on A { b { c { d } } } } } fragment F on A { x { y } }"),
            4
        );
        assert_eq!(
            depth("{ __schema { types { fields { name } } } me { id } }"),
            2
        );
        // A fragment spreading itself ends (validation refuses it later).
        assert_eq!(depth("{ a { ...F } } fragment F on A { b { ...F } }"), 2);
    }

    #[test]
    fn fragments_spread_many_times_are_measured_once() {
        // 40 fragments each spreading the next twice: 2^40 paths if every spread were walked.
        let mut query = String::from("{ a { ...F0 } }");
        for i in 0..40 {
            query.push_str(&format!(
                " fragment F{i} on A {{ b {{ ...F{} }} c {{ ...F{} }} }}",
                i + 1,
                i + 1
            ));
        }
        query.push_str(" fragment F40 on A { d }");
        assert_eq!(depth(&query), 42);
    }

    #[test]
    fn nested_introspection_lists_are_refused_and_the_standard_query_is_not() {
        assert_eq!(refusal(&parse(STANDARD_INTROSPECTION)), None);
        let abusive =
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
        let refused = refusal(&parse(abusive)).expect("three nested lists are refused");
        assert!(refused.contains("3 deep"), "{refused}");
        // Through a fragment, and under __type, as well.
        let abusive = "{ __type(name: \"Query\") { ...T } } fragment T on __Type { fields { type { inputFields { type { interfaces { name } } } } } }";
        assert!(refusal(&parse(abusive)).is_some());
        let deep = format!(
            "{{ {} }}",
            (0..MAX_DEPTH).fold("id".to_owned(), |inner, _| format!("a {{ {inner} }}"))
        );
        assert!(refusal(&parse(&deep))
            .expect("13 levels")
            .contains("13 levels"));
    }

    /// graphql-js 16's `getIntrospectionQuery({ descriptions: true, specifiedByUrl: true,
    /// directiveIsRepeatable: true, schemaDescription: true, inputValueDeprecation: true })`,
    /// as GraphiQL, GraphQL Code Generator and schemathesis send it.
    pub(crate) const STANDARD_INTROSPECTION: &str = include_str!("introspection.graphql");
}
