//! Limits on the document itself, checked as soon as it is parsed, before async-graphql's own
//! checks and validation: fragments that spread themselves, how big the document is with its
//! fragments inlined (validation and the complexity count walk every spread, so fragments
//! spreading one another twice over would make them walk 2^n paths), the number of aliases (so
//! one request cannot multiply a field, e.g. a login, many times over) and how deep it nests.
//! async-graphql's own depth limit counts introspection like any other field, and the standard
//! introspection query every client and code generator sends (graphql-js's
//! `getIntrospectionQuery`) is 13 levels deep; here introspection is measured by graphql-js's
//! own rule instead (`MaxIntrospectionDepthRule`): how many of `fields`, `inputFields`,
//! `interfaces` and `possibleTypes` are nested in one another, the lists that make an
//! introspection answer grow.

use std::collections::HashMap;

use async_graphql::parser::types::{
    ExecutableDocument, Field, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Request, ServerError, ServerResult};

/// The most aliased fields one document may contain.
pub const MAX_ALIASES: usize = 30;

/// The deepest a document may nest its fields (a field with no selection counts one), not
/// counting what is inside introspection.
pub const MAX_DEPTH: usize = 12;

/// The most selections (fields, fragment spreads and inline fragments) a document may hold
/// with every fragment spread replaced by the fragment: the standard introspection query
/// holds 239.
pub(crate) const MAX_SELECTIONS: usize = 5_000;

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

/// What a measure makes of one selection set with its fragments inlined: the deepest path
/// through it, or how many selections it holds.
#[derive(Clone, Copy)]
enum Fold {
    /// The deepest path, each field weighing what `weight` says; the selection under a field
    /// `stop` names is not entered.
    Deepest {
        weight: fn(&Field) -> usize,
        stop: fn(&Field) -> bool,
    },
    /// Every selection counted (a spread as one, plus its fragment's selections).
    Selections,
}

/// A fragment being measured, or measured.
enum Mark {
    Open,
    Measured(usize),
}

/// One measure over a document, each fragment measured once (so fragments spreading one
/// another many times cost nothing more to measure). A fragment that spreads itself, through
/// others or not, is noted in `cycle` and counts nothing the second time.
struct Measure<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    marks: HashMap<&'a str, Mark>,
    fold: Fold,
    cycle: Option<&'a str>,
}

impl<'a> Measure<'a> {
    fn new(document: &'a ExecutableDocument, fold: Fold) -> Self {
        Measure {
            fragments: &document.fragments,
            marks: HashMap::new(),
            fold,
            cycle: None,
        }
    }

    fn join(&self, acc: usize, one: usize) -> usize {
        match self.fold {
            Fold::Deepest { .. } => acc.max(one),
            Fold::Selections => acc.saturating_add(one),
        }
    }

    fn field(&mut self, field: &'a Field) -> usize {
        match self.fold {
            Fold::Deepest { weight, stop } => {
                let below = if stop(field) {
                    0
                } else {
                    self.of(&field.selection_set.node)
                };
                weight(field) + below
            }
            Fold::Selections => 1usize.saturating_add(self.of(&field.selection_set.node)),
        }
    }

    fn spread(&mut self, name: &'a str) -> usize {
        let inlined = match (self.marks.get(name), self.fragments.get(name)) {
            (Some(Mark::Measured(measure)), _) => *measure,
            (Some(Mark::Open), _) => {
                self.cycle.get_or_insert(name);
                0
            }
            // An unknown fragment is validation's to refuse.
            (None, None) => 0,
            (None, Some(fragment)) => {
                self.marks.insert(name, Mark::Open);
                let measure = self.of(&fragment.node.selection_set.node);
                self.marks.insert(name, Mark::Measured(measure));
                measure
            }
        };
        match self.fold {
            Fold::Deepest { .. } => inlined,
            Fold::Selections => inlined.saturating_add(1),
        }
    }

    fn of(&mut self, set: &'a SelectionSet) -> usize {
        let mut acc = 0;
        for item in &set.items {
            let one = match &item.node {
                Selection::Field(field) => self.field(&field.node),
                Selection::InlineFragment(fragment) => {
                    let inner = self.of(&fragment.node.selection_set.node);
                    match self.fold {
                        Fold::Deepest { .. } => inner,
                        Fold::Selections => inner.saturating_add(1),
                    }
                }
                Selection::FragmentSpread(spread) => {
                    self.spread(spread.node.fragment_name.node.as_str())
                }
            };
            acc = self.join(acc, one);
        }
        acc
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

/// Why a document is refused, if it is: a fragment spreading itself, too many selections with
/// fragments inlined, too many aliases, nested too deep, or introspection lists nested too
/// deep.
fn refusal(document: &ExecutableDocument) -> Option<String> {
    let mut selections = Measure::new(document, Fold::Selections);
    let mut total = 0usize;
    for (_, operation) in document.operations.iter() {
        total = total.saturating_add(selections.of(&operation.node.selection_set.node));
    }
    // Fragments no operation spreads are measured too: a cycle among them would still make
    // the checks after this one loop.
    for name in document.fragments.keys() {
        if !selections.marks.contains_key(name.as_str()) {
            selections.spread(name.as_str());
        }
    }
    if let Some(name) = selections.cycle {
        return Some(format!("the fragment {name} spreads itself"));
    }
    if total > MAX_SELECTIONS {
        return Some(format!(
            "the document holds more than {MAX_SELECTIONS} selections with its fragments inlined"
        ));
    }
    if document_aliases(document) > MAX_ALIASES {
        return Some(format!("the document has more than {MAX_ALIASES} aliases"));
    }
    let mut depth = Measure::new(
        document,
        Fold::Deepest {
            weight: |_| 1,
            stop: is_introspection,
        },
    );
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
    let mut lists = Measure::new(
        document,
        Fold::Deepest {
            weight: |field| usize::from(is_introspection_list(field)),
            stop: |_| false,
        },
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

/// Refuses a document over the limits above (a [`super::hooks`] step, before async-graphql
/// prepares the request). The document is parsed here, once (async-graphql takes the parsed
/// document from the request), so that nothing walks it before these limits did:
/// async-graphql's recursion-depth check, run right after parsing, follows every fragment
/// spread.
pub(crate) fn check(request: &mut Request) -> ServerResult<()> {
    // A document that does not parse is left to async-graphql, which says why.
    if let Ok(document) = request.parsed_query() {
        if let Some(reason) = refusal(document) {
            return Err(ServerError::new(reason, None));
        }
    }
    Ok(())
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

    const DEPTH: Fold = Fold::Deepest {
        weight: |_| 1,
        stop: is_introspection,
    };

    fn measure(query: &str, fold: Fold) -> usize {
        let document = parse(query);
        let mut depth = Measure::new(&document, fold);
        document
            .operations
            .iter()
            .map(|(_, op)| depth.of(&op.node.selection_set.node))
            .max()
            .unwrap_or(0)
    }

    fn depth(query: &str) -> usize {
        measure(query, DEPTH)
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
        // A fragment spreading itself ends (and is refused).
        assert_eq!(depth("{ a { ...F } } fragment F on A { b { ...F } }"), 2);
    }

    #[test]
    fn selections_are_counted_with_fragments_inlined() {
        assert_eq!(measure("{ me { id } }", Fold::Selections), 2);
        // a, the spread, F's x and y twice over (two spreads), the inline fragment and b.
        assert_eq!(
            measure(
                "{ a { ...F ...F ... on A { b } } } fragment F on A { x { y } }",
                Fold::Selections
            ),
            1 + 2 * 3 + 2
        );
        let standard = measure(STANDARD_INTROSPECTION, Fold::Selections);
        assert_eq!(standard, 239);
        assert!(refusal(&parse(STANDARD_INTROSPECTION)).is_none());
    }

    #[test]
    fn fragments_that_spread_themselves_are_refused() {
        let refused = refusal(&parse(
            "{ a { ...F } } fragment F on A { b { ...G } } fragment G on A { ...F }",
        ));
        assert!(
            refused
                .as_deref()
                .is_some_and(|r| r.contains("spreads itself")),
            "{refused:?}"
        );
        // One no operation spreads, too (async-graphql's depth check walks every fragment a
        // spread reaches, and validation would run on it).
        let refused = refusal(&parse("{ a } fragment F on A { ...F ...F }"));
        assert!(
            refused
                .as_deref()
                .is_some_and(|r| r.contains("F spreads itself")),
            "{refused:?}"
        );
    }

    #[test]
    fn fragments_doubling_one_another_are_refused_before_anything_walks_them() {
        // Each fragment spreads the next twice, with no field between: 2^40 selections
        // inlined, nested no deeper than two fields.
        let mut query = String::from("{ a { ...F0 } }");
        for i in 0..40 {
            query.push_str(&format!(
                " fragment F{i} on A {{ ...F{} ...F{} }}",
                i + 1,
                i + 1
            ));
        }
        query.push_str(" fragment F40 on A { d }");
        let refused = refusal(&parse(&query)).expect("refused");
        assert!(refused.contains("selections"), "{refused}");
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
