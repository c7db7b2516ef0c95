//! The web UI: the files of `ui/dist`, embedded into the binary at build time by `node/build.rs`, served
//! at `/` (the single page) and `/assets/...` (content-hashed bundles). No npm and no files are needed at
//! run time.
//!
//! Guarantees:
//! - `index.html` is sent with `Cache-Control: no-cache`, so a new binary's UI is picked up on reload;
//!   files under `/assets/` carry a content hash in their name and are cached as immutable.
//! - A gzipped copy (made at build time) is sent when the client accepts gzip.
//! - When the binary was built without `ui/dist`, `/` answers 503 with an HTML page saying how to build
//!   the UI, never an empty or broken page; the JSON API is unaffected.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file of `ui/dist`.
#[derive(Debug)]
pub struct Asset {
    /// Path relative to `ui/dist`, with `/` separators (e.g. `assets/index-3f2a.js`).
    pub path: &'static str,
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The file as built.
    pub raw: &'static [u8],
    /// A gzipped copy, when gzip makes it smaller.
    pub gzip: Option<&'static [u8]>,
}

mod embedded {
    use super::Asset;
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// The files embedded in this binary; empty when it was built without `ui/dist`.
pub fn assets() -> &'static [Asset] {
    embedded::ASSETS
}

/// True when this binary carries the web UI.
pub fn is_embedded() -> bool {
    find(assets(), "index.html").is_some()
}

/// The routes of the UI: `/` and `/assets/{*path}`. Stateless, so it merges into any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
}

/// The page shown at `/` when the binary was built without the UI.
pub const NOT_BUILT_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Kiln: web UI not built</title></head>\n<body style=\"font-family: sans-serif; max-width: 46em; \
margin: 3em auto\">\n<h1>Kiln's web UI is not in this binary</h1>\n<p>This <code>kiln-node</code> was \
built before the UI's assets existed (<code>ui/dist</code> was missing), so it cannot show the UI. The \
HTTP API (<a href=\"/api/v1/profile-types\">/api/v1/...</a>), gRPC and \
<a href=\"/metrics\">/metrics</a> work as usual.</p>\n<p>To get the UI, build it and then rebuild the \
node:</p>\n<pre>cd ui &amp;&amp; npm ci &amp;&amp; npm run build &amp;&amp; cd ..\ncargo build --release \
-p kiln-node</pre>\n<p><code>./scripts/run.sh</code> does both.</p>\n</body></html>\n";

fn find<'a>(assets: &'a [Asset], path: &str) -> Option<&'a Asset> {
    assets
        .binary_search_by(|asset| asset.path.cmp(path))
        .ok()
        .map(|index| &assets[index])
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|parameter| {
                parameter
                    .trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// Answers one embedded file, gzipped when the client takes it; `None` when there is no such file.
pub fn respond(assets: &[Asset], path: &str, headers: &HeaderMap) -> Option<Response> {
    let asset = find(assets, path)?;
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = match asset.gzip {
        Some(gzip) if accepts_gzip(headers) => {
            let mut response = gzip.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            response
        }
        _ => asset.raw.into_response(),
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response_headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

/// The single page, or the "not built" page (503) when the binary has no UI.
pub fn index_response(assets: &[Asset], headers: &HeaderMap) -> Response {
    respond(assets, "index.html", headers).unwrap_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            NOT_BUILT_PAGE,
        )
            .into_response()
    })
}

async fn index(headers: HeaderMap) -> Response {
    index_response(assets(), &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let full = format!("assets/{path}");
    respond(assets(), &full, &headers).unwrap_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no such UI asset: /{full}\n"),
        )
            .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static FAKE: &[Asset] = &[
        Asset {
            path: "assets/app-1.js",
            content_type: "text/javascript; charset=utf-8",
            raw: b"console.log(1)",
            gzip: Some(b"GZ"),
        },
        Asset {
            path: "index.html",
            content_type: "text/html; charset=utf-8",
            raw: b"<!doctype html>",
            gzip: None,
        },
    ];

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(accept).unwrap());
        headers
    }

    #[test]
    fn serves_gzip_only_when_accepted() {
        let gz = respond(FAKE, "assets/app-1.js", &headers("br, gzip")).unwrap();
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(
            gz.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let plain = respond(FAKE, "assets/app-1.js", &headers("gzip;q=0, identity")).unwrap();
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(respond(FAKE, "assets/missing.js", &HeaderMap::new()).is_none());
    }

    #[test]
    fn index_is_not_cached_and_missing_ui_explains_itself() {
        let index = index_response(FAKE, &HeaderMap::new());
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        let missing = index_response(&[], &HeaderMap::new());
        assert_eq!(missing.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            missing.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }

    #[test]
    fn embedded_assets_are_sorted_for_lookup() {
        let paths: Vec<&str> = assets().iter().map(|asset| asset.path).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted);
    }
}
