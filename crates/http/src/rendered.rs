//! Rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4; orig D.3): JPEG (the
//! default) or PNG of a frame, with `viewport`, `quality` and `window`. An instance renders its
//! first frame; a series or study renders each instance's first frame as `multipart/related`,
//! one instance in memory at a time; a thumbnail is one image (of the first instance that has
//! pixel data, for a series or study).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tessera_pixels::{ImageFormat, Instance, PixelError, RenderOptions, Window};
use tessera_service::{DicomService, RetrieveScope, StoredInstance};

use crate::multipart::{self, Part};
use crate::wado::{instance_scope, series_scope, study_scope};
use crate::{ApiError, AppState, media};

/// The viewport of a thumbnail when the request names none.
const THUMBNAIL_SIZE: u32 = 128;

type Params = Query<HashMap<String, String>>;

/// The image format the client accepts: JPEG unless PNG comes first. An `accept` query
/// parameter replaces the header (PS3.18 §8.3.3.1; OHIF asks for thumbnails that way).
fn format(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    multipart: bool,
) -> Result<ImageFormat, ApiError> {
    let from_query;
    let headers = match params.get("accept") {
        Some(value) => {
            let mut only = HeaderMap::new();
            only.insert(
                axum::http::header::ACCEPT,
                axum::http::HeaderValue::from_str(value)
                    .map_err(|_| ApiError::BadRequest("invalid accept parameter".into()))?,
            );
            from_query = only;
            &from_query
        }
        None => headers,
    };
    for requested in media::accepted(headers, None) {
        let Some(requested) = requested else {
            return Ok(ImageFormat::Jpeg);
        };
        if requested.multipart && !multipart {
            continue;
        }
        match requested.part_type.as_str() {
            "image/jpeg" | "image/*" | "*/*" => return Ok(ImageFormat::Jpeg),
            "image/png" => return Ok(ImageFormat::Png),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(
        "rendered resources are image/jpeg or image/png".into(),
    ))
}

/// `quality`, `viewport` and `window` from the query string (PS3.18 §8.3.5.1).
fn options(
    params: &HashMap<String, String>,
    format: ImageFormat,
    thumbnail: bool,
) -> Result<RenderOptions, ApiError> {
    let bad = |what: &str| ApiError::BadRequest(format!("invalid {what} parameter"));
    let quality = match params.get("quality") {
        None => 100,
        Some(q) => q
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| bad("quality (1 to 100)"))?,
    };
    let viewport = match params.get("viewport") {
        None if thumbnail => Some((THUMBNAIL_SIZE, THUMBNAIL_SIZE)),
        None => None,
        Some(v) => {
            // vw,vh[,sx,sy,sw,sh]: the source region is not supported beyond the whole image.
            let numbers: Vec<&str> = v.split(',').map(str::trim).collect();
            let size = |i: usize| numbers.get(i).and_then(|n| n.parse::<u32>().ok());
            match (size(0), size(1), numbers.len()) {
                (Some(w), Some(h), 2) if w > 0 && h > 0 => Some((w, h)),
                _ => return Err(bad("viewport (columns,rows)")),
            }
        }
    };
    let window = params.get("window").map(|w| Window::parse(w)).transpose()?;
    Ok(RenderOptions {
        format,
        quality,
        viewport,
        window,
    })
}

/// Reads a stored instance into memory, refusing one over `Tessera:Limits:MaxDecodeBytes`.
pub(crate) async fn load(
    service: &DicomService,
    instance: StoredInstance,
    limit: u64,
) -> Result<Vec<u8>, ApiError> {
    let file = service.open_file(instance).await?;
    if file.read.size > limit {
        return Err(PixelError::TooLarge {
            needed: file.read.size,
            limit,
        }
        .into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(file.read.size).unwrap_or(0));
    let mut chunks = file.read.stream;
    while let Some(chunk) = chunks.try_next().await? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(PixelError::TooLarge {
                needed: (bytes.len() + chunk.len()) as u64,
                limit,
            }
            .into());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Renders frame `frame` (0-based) of `instance` on a blocking thread.
async fn render(
    state: &AppState,
    instance: StoredInstance,
    frame: u32,
    options: RenderOptions,
) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_decode_bytes;
    let bytes = load(&state.service, instance, limit).await?;
    let image = tokio::task::spawn_blocking(move || {
        Instance::parse(&bytes, limit)?.render(frame, &options)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("render task failed: {e}")))??;
    Ok(Bytes::from(image))
}

fn image_response(format: ImageFormat, image: Bytes) -> Response {
    ([(CONTENT_TYPE, format.media_type())], image).into_response()
}

/// A single image of the first instance in `scope` that renders.
async fn first_rendered(
    state: &AppState,
    scope: RetrieveScope,
    options: RenderOptions,
) -> Result<Response, ApiError> {
    let format = options.format;
    let mut last = None;
    for instance in state.service.instances(&scope).await? {
        match render(state, instance, 0, options.clone()).await {
            Ok(image) => return Ok(image_response(format, image)),
            Err(ApiError::Pixels(PixelError::NoPixelData)) => {
                last = Some(PixelError::NoPixelData.into())
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(ApiError::Pixels(PixelError::NoPixelData)))
}

/// Each instance's first frame, one part per instance with pixel data.
async fn all_rendered(
    state: AppState,
    scope: RetrieveScope,
    options: RenderOptions,
) -> Result<Response, ApiError> {
    let instances = state.service.instances(&scope).await?;
    let format = options.format;
    let parts = stream::iter(instances)
        .then(move |instance| {
            let state = state.clone();
            let options = options.clone();
            async move { render(&state, instance, 0, options).await }
        })
        .filter_map(move |rendered| async move {
            match rendered {
                Err(ApiError::Pixels(PixelError::NoPixelData)) => None,
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                Ok(image) => Some(Ok(Part::whole(format.media_type().to_owned(), image))),
            }
        })
        .boxed();
    Ok(multipart::response(format.media_type(), parts))
}

/// `GET /studies/{study}/rendered`.
#[utoipa::path(get, path = "/studies/{study}/rendered", tag = "Rendered", params(crate::openapi::StudyPath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn study(
    State(state): State<AppState>,
    Path(p): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let options = options(&params, format(&headers, &params, true)?, false)?;
    all_rendered(state, study_scope(&p)?, options).await
}

/// `GET /studies/{study}/series/{series}/rendered`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/rendered", tag = "Rendered", params(crate::openapi::SeriesPath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn series(
    State(state): State<AppState>,
    Path(p): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let options = options(&params, format(&headers, &params, true)?, false)?;
    all_rendered(state, series_scope(&p)?, options).await
}

/// `GET …/instances/{instance}/rendered`: the first frame (orig D.3).
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/rendered", tag = "Rendered", params(crate::openapi::InstancePath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn instance(
    State(state): State<AppState>,
    Path(p): Path<(String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let options = options(&params, format(&headers, &params, false)?, false)?;
    first_rendered(&state, instance_scope(&p)?, options).await
}

/// `GET …/instances/{instance}/frames/{frames}/rendered`: one image per frame, multipart when
/// several frames are asked for.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", tag = "Rendered", params(crate::openapi::InstancePath, crate::openapi::FramesPath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn frames(
    State(state): State<AppState>,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let numbers = crate::wado::frame_numbers(&list, state.limits.max_frames_per_request)?;
    let scope = instance_scope(&(study, series, sop))?;
    let instance = state.service.instances(&scope).await?.remove(0);
    let format = format(&headers, &params, numbers.len() > 1)?;
    let options = options(&params, format, false)?;
    if let [number] = numbers[..] {
        let image = render(&state, instance, number.saturating_sub(1), options).await?;
        return Ok(image_response(format, image));
    }
    // Several frames of one instance: it is loaded and parsed once.
    let limit = state.limits.max_decode_bytes;
    let bytes = load(&state.service, instance, limit).await?;
    let images = tokio::task::spawn_blocking(move || {
        let parsed = Instance::parse(&bytes, limit)?;
        numbers
            .iter()
            .map(|n| {
                parsed
                    .render(n.saturating_sub(1), &options)
                    .map(Bytes::from)
            })
            .collect::<Result<Vec<_>, PixelError>>()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("render task failed: {e}")))??;
    let parts = stream::iter(
        images
            .into_iter()
            .map(move |image| Ok(Part::whole(format.media_type().to_owned(), image))),
    )
    .boxed();
    Ok(multipart::response(format.media_type(), parts))
}

/// `GET /studies/{study}/thumbnail`.
#[utoipa::path(get, path = "/studies/{study}/thumbnail", tag = "Rendered", params(crate::openapi::StudyPath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn study_thumbnail(
    State(state): State<AppState>,
    Path(p): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let options = options(&params, format(&headers, &params, false)?, true)?;
    first_rendered(&state, study_scope(&p)?, options).await
}

/// `GET /studies/{study}/series/{series}/thumbnail`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/thumbnail", tag = "Rendered", params(crate::openapi::SeriesPath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn series_thumbnail(
    State(state): State<AppState>,
    Path(p): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let options = options(&params, format(&headers, &params, false)?, true)?;
    first_rendered(&state, series_scope(&p)?, options).await
}

/// `GET …/instances/{instance}/thumbnail`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/thumbnail", tag = "Rendered", params(crate::openapi::InstancePath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn instance_thumbnail(
    State(state): State<AppState>,
    Path(p): Path<(String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let options = options(&params, format(&headers, &params, false)?, true)?;
    first_rendered(&state, instance_scope(&p)?, options).await
}

/// `GET …/instances/{instance}/frames/{frame}/thumbnail`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", tag = "Rendered", params(crate::openapi::InstancePath, crate::openapi::FramesPath, crate::openapi::RenderedQuery), responses((status = 200, description = "The rendered image(s)", content((String = "image/jpeg"), (String = "image/png"), (String = "multipart/related")))))]
pub async fn frame_thumbnail(
    State(state): State<AppState>,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let numbers = crate::wado::frame_numbers(&list, 1)?;
    let scope = instance_scope(&(study, series, sop))?;
    let instance = state.service.instances(&scope).await?.remove(0);
    let format = format(&headers, &params, false)?;
    let options = options(&params, format, true)?;
    let frame = numbers.first().map_or(0, |n| n.saturating_sub(1));
    let image = render(&state, instance, frame, options).await?;
    Ok(image_response(format, image))
}
