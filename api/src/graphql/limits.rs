//! Limits async-graphql does not have built in: the number of aliases in one document, so one
//! request cannot multiply a field (e.g. a login) many times over.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};

/// The most aliased fields one document may contain.
pub const MAX_ALIASES: usize = 30;

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

/// Refuses documents with more than [`MAX_ALIASES`] aliases, before validation.
pub(crate) struct AliasLimit;

impl ExtensionFactory for AliasLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(AliasLimit)
    }
}

#[async_trait::async_trait]
impl Extension for AliasLimit {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        if document_aliases(&document) > MAX_ALIASES {
            return Err(ServerError::new(
                format!("the document has more than {MAX_ALIASES} aliases"),
                None,
            ));
        }
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_counted_everywhere() {
        let document = async_graphql::parser::parse_query(
            "query { a: me { id } b: me { x: id } ...F ... on Query { c: me { id } } } fragment F on Query { d: me { id } }",
        )
        .unwrap();
        assert_eq!(document_aliases(&document), 5);
    }
}
