//! The OpenAPI 3 document of the HTTP surface, generated from the handlers' `#[utoipa::path]`
//! annotations and the same route table that builds the router ([`crate::router`]), so that a
//! route cannot exist without its entry. Served at `GET /openapi.json`; a copy is kept in the
//! repository (`docs/openapi.json`) and a test fails when the two differ.

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, PathItem, RefOr, ResponseBuilder};

/// The document's fixed parts; the paths come from the route table.
#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "Tessera",
    description = "A DICOMweb server (STOW-RS, WADO-RS, QIDO-RS, delete, change feed, operations) \
                   compatible with Microsoft's Medical Imaging Server for DICOM. `/v1` and `/v2` \
                   differ where the original's versions do (validation, change-feed windows).",
    license(name = "MIT OR Apache-2.0")
))]
pub struct ApiDoc;

/// Path parameters of a study.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct StudyPath {
    /// StudyInstanceUID.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)*$", max_length = 64)]
    study: String,
}

/// Path parameters of a series.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct SeriesPath {
    /// StudyInstanceUID.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)*$", max_length = 64)]
    study: String,
    /// SeriesInstanceUID.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)*$", max_length = 64)]
    series: String,
}

/// Path parameters of an instance.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct InstancePath {
    /// StudyInstanceUID.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)*$", max_length = 64)]
    study: String,
    /// SeriesInstanceUID.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)*$", max_length = 64)]
    series: String,
    /// SOPInstanceUID.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)*$", max_length = 64)]
    instance: String,
}

/// The frame list of a frames request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct FramesPath {
    /// Frame numbers, 1 or more, comma separated.
    #[param(pattern = r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8}){0,9}$")]
    frames: String,
}

/// The `accept` query parameter of retrieve requests (PS3.18 §8.3.3.1).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AcceptQuery {
    /// Media types that stand for the `Accept` header.
    accept: Option<String>,
}

/// The query parameters of rendered and thumbnail resources (PS3.18 §8.3.5.1).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RenderedQuery {
    /// `image/jpeg` or `image/png`, standing for the `Accept` header.
    accept: Option<String>,
    /// JPEG quality, 1–100.
    quality: Option<u8>,
    /// `width,height` of the output.
    viewport: Option<String>,
    /// `center,width,function` of the VOI window.
    window: Option<String>,
}

/// The common QIDO-RS parameters (any searchable attribute may be given too, as `keyword=value`
/// or `ggggeeee=value`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct QidoParams {
    /// Results to return (1–200, default 100).
    limit: Option<i64>,
    /// Results to skip.
    offset: Option<i64>,
    /// Attributes to return besides the defaults, or `all`.
    includefield: Option<String>,
    /// Prefix matching of person names.
    fuzzymatching: Option<bool>,
}

/// The statuses any operation may answer besides its own (the one mapping of `ApiError`):
/// client faults, and 503 when a dependency is down or the server is at capacity.
const COMMON_ERRORS: [(&str, &str); 10] = [
    (
        "400",
        "The request is malformed (a bad UID or parameter, a broken body)",
    ),
    ("401", "A bearer token is required (authentication on)"),
    ("403", "The token's roles do not allow this"),
    ("404", "Nothing matched"),
    ("406", "No acceptable representation (Accept)"),
    ("408", "The request body stopped arriving"),
    ("409", "Nothing was stored"),
    ("413", "The request body is too large"),
    ("415", "The request's media type is not supported"),
    (
        "503",
        "A dependency is unavailable or the server is at capacity; retry after Retry-After",
    ),
];

/// The whole document: health, the document itself, and every `/v1` and `/v2` route, with the
/// common error statuses on each operation and operation ids made unique per version.
pub fn document() -> OpenApi {
    let (_, mut doc) = crate::routes(crate::Security::default()).split_for_parts();
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            // Handlers are shared by both versions and their names repeat across modules, so
            // the id is the method and the path: `get_v1_studies_study`.
            let words: Vec<&str> = path
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            operation.operation_id = Some(format!("{method}_{}", words.join("_")));
            // Request bodies are DICOM bytes (or multipart/related of them), whatever their
            // media type says: `format: binary` tells generators to send raw bytes.
            if let Some(RefOr::T(body)) = operation.request_body.as_mut() {
                for content in body.content.values_mut() {
                    let RefOr::T(content) = content else {
                        continue;
                    };
                    content.schema = Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                            .into(),
                    );
                }
            }
            for (status, description) in COMMON_ERRORS {
                let error = ResponseBuilder::new()
                    .description(description)
                    .content("text/plain", ContentBuilder::new().build())
                    .build();
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error.into());
            }
        }
    }
    doc
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("put", item.put.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
        ("head", item.head.as_mut()),
        ("options", item.options.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
}

/// The document as the repository keeps it: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "Documentation", responses(
    (status = 200, description = "This document", content_type = "application/json", body = serde_json::Value)
))]
pub async fn serve() -> Json<OpenApi> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// The repository's copy of the document; `TESSERA_UPDATE_OPENAPI=1` rewrites it.
    fn kept() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
    }

    #[test]
    fn the_kept_document_is_the_generated_one() {
        let generated = super::document_json();
        if std::env::var_os("TESSERA_UPDATE_OPENAPI").is_some() {
            std::fs::write(kept(), &generated).unwrap();
        }
        let kept = std::fs::read_to_string(kept()).unwrap_or_default();
        assert!(
            kept == generated,
            "docs/openapi.json differs from the routes; regenerate it with \
             TESSERA_UPDATE_OPENAPI=1 cargo test -p tessera-http openapi"
        );
    }

    #[test]
    fn every_route_is_documented_once_per_version_with_unique_operation_ids() {
        let doc = super::document();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for path in [
            "/health/check",
            "/openapi.json",
            "/v1/changefeed",
            "/v2/changefeed/latest",
        ] {
            assert!(paths.iter().any(|p| *p == path), "{path} in {paths:?}");
        }
        let v1 = paths.iter().filter(|p| p.starts_with("/v1/")).count();
        let v2 = paths.iter().filter(|p| p.starts_with("/v2/")).count();
        assert_eq!(v1, v2);
        assert!(v1 >= 16, "{v1} routes under /v1");
        let mut ids = Vec::new();
        for item in doc.paths.paths.values() {
            let mut item = item.clone();
            for (_, operation) in super::operations(&mut item) {
                ids.push(operation.operation_id.clone().unwrap_or_default());
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
    }
}
