//! GraphiQL on `GET /graphql`, and what it loads from `/graphiql/…`: every file comes from the
//! binary (vendored in `api/assets/graphiql` by its `vendor.sh`, licenses beside them), so the
//! page works with no outside request and its content security policy allows none.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// A file the page loads: its name under `/graphiql/`, media type and content.
struct Asset {
    name: &'static str,
    media: &'static str,
    content: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $media:literal) => {
        Asset {
            name: $name,
            media: $media,
            content: include_bytes!(concat!("../../assets/graphiql/", $name)),
        }
    };
}

static ASSETS: [Asset; 7] = [
    asset!("graphiql.min.js", "text/javascript; charset=utf-8"),
    asset!("graphiql.min.css", "text/css; charset=utf-8"),
    asset!("react.production.min.js", "text/javascript; charset=utf-8"),
    asset!(
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("graphql-ws.min.js", "text/javascript; charset=utf-8"),
    asset!("start.js", "text/javascript; charset=utf-8"),
    asset!("page.css", "text/css; charset=utf-8"),
];

const PAGE: &str = include_str!("../../assets/graphiql/index.html");

/// Scripts and styles from this service only (GraphiQL sets inline styles; its fonts are data
/// URLs), requests to this service only (`'self'` covers its WebSocket too), never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      font-src data:; img-src 'self' data:; connect-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn policy_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// The page (404 when GraphiQL is switched off).
pub(crate) async fn page(State(state): State<AppState>) -> Response {
    if !state.graphiql {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    policy_headers(&mut response);
    response
}

/// One of the page's files (404 for any other name, or when GraphiQL is switched off). They
/// change only with the binary, so browsers may keep them for a day.
pub(crate) async fn asset(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let found = ASSETS.iter().find(|asset| asset.name == name);
    let (true, Some(asset)) = (state.graphiql, found) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.media),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        asset.content,
    )
        .into_response();
    policy_headers(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_files_that_are_served() {
        let loaded: Vec<&str> = PAGE
            .split(['"', '\''])
            .filter_map(|part| part.strip_prefix("graphiql/"))
            .collect();
        assert_eq!(loaded.len(), ASSETS.len(), "{loaded:?}");
        for name in loaded {
            assert!(
                ASSETS.iter().any(|asset| asset.name == name),
                "{name} is not served"
            );
        }
        for asset in &ASSETS {
            assert!(!asset.content.is_empty(), "{} is empty", asset.name);
        }
    }
}
