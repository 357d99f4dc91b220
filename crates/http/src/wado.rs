//! WADO-RS: instances, metadata and frames (PS3.18 §10.4, orig D.2–D.3).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tessera_blob::BlobRead;
use tessera_core::InstanceIdentifier;
use tessera_service::{DicomService, RetrieveScope, StoredInstance};

use tessera_pixels::{EXPLICIT_VR_LITTLE_ENDIAN_UID, TRANSCODABLE};

use crate::multipart::{self, Part};
use crate::public_url::BaseUrl;
use crate::stow::parse_uid;
use crate::{ApiError, AppState, media};

/// Bytes of instance files a study or series retrieve opens and reads ahead in one go (several
/// small instances per blocking task, each a thread hand-off).
const OPEN_AHEAD_BYTES: u64 = 2 * 1024 * 1024;

/// Metadata documents read from the blob store at once for one study or series request.
const METADATA_READS_IN_FLIGHT: usize = 32;

type StudyPath = Path<String>;
type SeriesPath = Path<(String, String)>;
type InstancePath = Path<(String, String, String)>;

pub(crate) fn study_scope(study: &str) -> Result<RetrieveScope, ApiError> {
    Ok(RetrieveScope::Study(parse_uid(study, "StudyInstanceUID")?))
}

pub(crate) fn series_scope((study, series): &(String, String)) -> Result<RetrieveScope, ApiError> {
    Ok(RetrieveScope::Series(
        parse_uid(study, "StudyInstanceUID")?,
        parse_uid(series, "SeriesInstanceUID")?,
    ))
}

pub(crate) fn instance_scope(
    (study, series, sop): &(String, String, String),
) -> Result<RetrieveScope, ApiError> {
    Ok(RetrieveScope::Instance(InstanceIdentifier {
        study: parse_uid(study, "StudyInstanceUID")?,
        series: parse_uid(series, "SeriesInstanceUID")?,
        sop: parse_uid(sop, "SOPInstanceUID")?,
    }))
}

/// `GET /studies/{study}`.
#[utoipa::path(get, path = "/studies/{study}", tag = "WADO-RS", params(crate::openapi::StudyPath, crate::openapi::AcceptQuery), responses((status = 200, description = "The instances as stored", content((String = "multipart/related"), (String = "application/dicom")))))]
pub async fn study(
    State(s): State<AppState>,
    Path(p): StudyPath,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = study_scope(&p)?;
    retrieve(&s, scope, &h, q.as_deref(), Resource::Collection).await
}

/// `GET /studies/{study}/series/{series}`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}", tag = "WADO-RS", params(crate::openapi::SeriesPath, crate::openapi::AcceptQuery), responses((status = 200, description = "The instances as stored", content((String = "multipart/related"), (String = "application/dicom")))))]
pub async fn series(
    State(s): State<AppState>,
    Path(p): SeriesPath,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = series_scope(&p)?;
    retrieve(&s, scope, &h, q.as_deref(), Resource::Collection).await
}

/// `GET /studies/{study}/series/{series}/instances/{instance}`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}", tag = "WADO-RS", params(crate::openapi::InstancePath, crate::openapi::AcceptQuery), responses((status = 200, description = "The instances as stored", content((String = "multipart/related"), (String = "application/dicom")))))]
pub async fn instance(
    State(s): State<AppState>,
    Path(p): InstancePath,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = instance_scope(&p)?;
    retrieve(&s, scope, &h, q.as_deref(), Resource::Instance).await
}

/// `GET /studies/{study}/metadata`.
#[utoipa::path(get, path = "/studies/{study}/metadata", tag = "WADO-RS", params(crate::openapi::StudyPath, crate::openapi::AcceptQuery), responses((status = 200, description = "Metadata, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 304, description = "Not modified (If-None-Match)")))]
pub async fn study_metadata(
    State(s): State<AppState>,
    Path(p): StudyPath,
    RawQuery(q): RawQuery,
    BaseUrl(base): BaseUrl,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(&s.service, study_scope(&p)?, &h, q.as_deref(), base).await
}

/// `GET /studies/{study}/series/{series}/metadata`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/metadata", tag = "WADO-RS", params(crate::openapi::SeriesPath, crate::openapi::AcceptQuery), responses((status = 200, description = "Metadata, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 304, description = "Not modified (If-None-Match)")))]
pub async fn series_metadata(
    State(s): State<AppState>,
    Path(p): SeriesPath,
    RawQuery(q): RawQuery,
    BaseUrl(base): BaseUrl,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(&s.service, series_scope(&p)?, &h, q.as_deref(), base).await
}

/// `GET /studies/{study}/series/{series}/instances/{instance}/metadata`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/metadata", tag = "WADO-RS", params(crate::openapi::InstancePath, crate::openapi::AcceptQuery), responses((status = 200, description = "Metadata, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 304, description = "Not modified (If-None-Match)")))]
pub async fn instance_metadata(
    State(s): State<AppState>,
    Path(p): InstancePath,
    RawQuery(q): RawQuery,
    BaseUrl(base): BaseUrl,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(&s.service, instance_scope(&p)?, &h, q.as_deref(), base).await
}

/// What a WADO request retrieves, which decides the representations it may have (orig D.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    /// A study or a series: `multipart/related; type="application/dicom"` only.
    Collection,
    /// One instance: multipart, or a bare `application/dicom`.
    Instance,
    /// Frames of an instance: `multipart/related; type="application/octet-stream"`, or a bare
    /// `application/octet-stream` when one frame is asked for.
    Frames {
        /// Exactly one frame.
        single: bool,
    },
}

impl Resource {
    /// The media type of the body or of each part.
    fn part_type(self) -> &'static str {
        match self {
            Self::Collection | Self::Instance => "application/dicom",
            Self::Frames { .. } => "application/octet-stream",
        }
    }

    /// Whether a bare (single-part) body is possible.
    fn allows_single_part(self) -> bool {
        matches!(self, Self::Instance | Self::Frames { single: true })
    }

    /// The shape `*/*` gets: single part where possible (what Tessera has always answered).
    fn multipart_for_any(self) -> bool {
        !self.allows_single_part()
    }
}

/// A representation the client takes and Tessera could produce.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    multipart: bool,
    /// `None`: as stored.
    transfer_syntax: Option<String>,
}

/// How a retrieve is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Representation {
    /// `multipart/related`, or one bare part.
    multipart: bool,
    /// Transcode to Explicit VR Little Endian (instances not already in it).
    transcode: bool,
}

/// The representations of `resource` the request accepts, most preferred first, decided before
/// the resource is looked up (so an unsupported `Accept` is 406 whether or not it exists).
fn candidates(
    headers: &HeaderMap,
    query: Option<&str>,
    resource: Resource,
) -> Result<Vec<Candidate>, ApiError> {
    let part_type = resource.part_type();
    let found: Vec<Candidate> = media::accepted(headers, query)
        .into_iter()
        .filter_map(|preference| {
            let Some(requested) = preference else {
                return Some(Candidate {
                    multipart: resource.multipart_for_any(),
                    transfer_syntax: None,
                });
            };
            let multipart = if requested.part_type == "*/*" {
                resource.multipart_for_any()
            } else if requested.multipart {
                if requested.part_type != part_type {
                    return None;
                }
                true
            } else {
                let fits =
                    requested.part_type == part_type || requested.part_type == "application/*";
                if !(fits && resource.allows_single_part()) {
                    return None;
                }
                false
            };
            media::producible(requested.transfer_syntax.as_deref()).then_some(Candidate {
                multipart,
                transfer_syntax: requested.transfer_syntax,
            })
        })
        .collect();
    if found.is_empty() {
        return Err(not_acceptable(resource));
    }
    Ok(found)
}

/// The first candidate Tessera can serve for instances stored in `stored_syntaxes`: a request
/// that names no transfer syntax, or the stored one, gets the stored bytes; one that names
/// Explicit VR Little Endian gets it when every stored syntax is one Tessera transcodes from
/// (orig D.3); any other is not acceptable.
fn pick(
    candidates: Vec<Candidate>,
    stored_syntaxes: &[&str],
    resource: Resource,
) -> Result<Representation, ApiError> {
    candidates
        .into_iter()
        .find_map(|candidate| {
            let transcode = match candidate.transfer_syntax.as_deref() {
                None => false,
                Some(ts) if stored_syntaxes.iter().all(|stored| *stored == ts) => false,
                Some(EXPLICIT_VR_LITTLE_ENDIAN_UID)
                    if stored_syntaxes
                        .iter()
                        .all(|stored| TRANSCODABLE.contains(stored)) =>
                {
                    true
                }
                Some(_) => return None,
            };
            Some(Representation {
                multipart: candidate.multipart,
                transcode,
            })
        })
        .ok_or_else(|| not_acceptable(resource))
}

fn not_acceptable(resource: Resource) -> ApiError {
    let shape = match resource {
        Resource::Collection => "multipart/related",
        Resource::Instance => "multipart/related or a single part",
        Resource::Frames { single: true } => "multipart/related or a single part",
        Resource::Frames { single: false } => "multipart/related",
    };
    ApiError::NotAcceptable(format!(
        "available as {shape} of {} in the stored transfer syntax, or in \
         {EXPLICIT_VR_LITTLE_ENDIAN_UID} from the syntaxes Tessera transcodes",
        resource.part_type()
    ))
}

/// An instance's bytes in Explicit VR Little Endian, transcoded on a blocking thread with the
/// instance in memory under `Tessera:Limits:MaxDecodeBytes`.
async fn transcoded(
    service: &DicomService,
    instance: StoredInstance,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let bytes = crate::rendered::load(service, instance, limit).await?;
    let out = tokio::task::spawn_blocking(move || {
        tessera_pixels::Instance::parse(&bytes, limit)?.to_explicit_vr_little_endian()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("transcode task failed: {e}")))??;
    Ok(Bytes::from(out))
}

/// The `application/dicom` part type of transcoded instances.
fn explicit_type() -> String {
    format!("application/dicom; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN_UID}")
}

async fn retrieve(
    state: &AppState,
    scope: RetrieveScope,
    headers: &HeaderMap,
    query: Option<&str>,
    resource: Resource,
) -> Result<Response, ApiError> {
    let service = &state.service;
    let limit = state.limits.max_decode_bytes;
    let candidates = candidates(headers, query, resource)?;
    let instances = service.instances(&scope).await?;
    let syntaxes: Vec<&str> = instances
        .iter()
        .map(|i| i.transfer_syntax.as_str())
        .collect();
    let chosen = pick(candidates, &syntaxes, resource)?;
    if !chosen.multipart {
        let instance = instances.into_iter().next().ok_or(ApiError::Service(
            tessera_service::ServiceError::NotFound("instance"),
        ))?;
        if chosen.transcode && instance.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN_UID {
            let bytes = transcoded(service, instance, limit).await?;
            return Ok(([(CONTENT_TYPE, explicit_type())], bytes).into_response());
        }
        let content_type = dicom_type(&instance);
        let file = service.open_file(instance).await?;
        let body = Body::from_stream(file.read.stream.map_err(std::io::Error::other));
        return Ok((
            [
                (CONTENT_TYPE, content_type),
                (CONTENT_LENGTH, file.read.size.to_string()),
            ],
            body,
        )
            .into_response());
    }
    if resource == Resource::Instance
        && let [instance] = instances.as_slice()
    {
        // One part, opened before the answer starts, so its length is known.
        let part = if chosen.transcode && instance.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN_UID
        {
            Part::whole(
                explicit_type(),
                transcoded(service, instance.clone(), limit).await?,
            )
        } else {
            let file = service.open_file(instance.clone()).await?;
            file_part(dicom_type(instance), file.read).await?
        };
        return Ok(multipart::sized_response("application/dicom", vec![part]));
    }
    if !chosen.transcode {
        return Ok(multipart::response(
            "application/dicom",
            stored_parts(service.clone(), instances),
        ));
    }
    let service = service.clone();
    let parts = stream::iter(instances)
        .then(move |instance| {
            let service = service.clone();
            async move {
                if chosen.transcode && instance.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN_UID {
                    let bytes = transcoded(&service, instance, limit)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    return Ok(Part::whole(explicit_type(), bytes));
                }
                let content_type = dicom_type(&instance);
                let file = service
                    .open_file(instance)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(Part::streamed(
                    content_type,
                    Some(file.read.size),
                    file.read.stream.map_err(std::io::Error::other).boxed(),
                ))
            }
        })
        .boxed();
    Ok(multipart::response("application/dicom", parts))
}

/// The parts of `instances` as stored, their files opened a batch at a time (several small
/// files in one blocking task where the store is local), each batch when the one before it has
/// been sent.
fn stored_parts(
    service: DicomService,
    instances: Vec<StoredInstance>,
) -> futures::stream::BoxStream<'static, Result<Part, std::io::Error>> {
    stream::unfold(
        (service, instances, 0usize),
        |(service, instances, next)| async move {
            let rest = instances.get(next..).filter(|rest| !rest.is_empty())?;
            let opened = service.open_files(rest, OPEN_AHEAD_BYTES).await;
            if opened.is_empty() {
                let error = std::io::Error::other("no instance file was opened");
                return Some((
                    stream::iter(vec![Err(error)]),
                    (service, instances, usize::MAX),
                ));
            }
            let after = next + opened.len();
            let parts: Vec<Result<Part, std::io::Error>> = opened
                .into_iter()
                .map(|file| {
                    let file = file.map_err(std::io::Error::other)?;
                    Ok(Part::streamed(
                        dicom_type(&file.instance),
                        Some(file.read.size),
                        file.read.stream.map_err(std::io::Error::other).boxed(),
                    ))
                })
                .collect();
            Some((stream::iter(parts), (service, instances, after)))
        },
    )
    .flatten()
    .boxed()
}

/// The part of an opened file: in memory when its first chunk is all of it (a small instance
/// on a local store, read whole when opened), else streamed.
async fn file_part(content_type: String, read: BlobRead) -> Result<Part, ApiError> {
    let BlobRead { size, mut stream } = read;
    match stream.next().await.transpose()? {
        Some(first) if first.len() as u64 == size => Ok(Part::whole(content_type, first)),
        None if size == 0 => Ok(Part::whole(content_type, Bytes::new())),
        first => Ok(Part::streamed(
            content_type,
            Some(size),
            stream::iter(first.map(Ok))
                .chain(stream)
                .map_err(std::io::Error::other)
                .boxed(),
        )),
    }
}

fn dicom_type(instance: &StoredInstance) -> String {
    format!(
        "application/dicom; transfer-syntax={}",
        instance.transfer_syntax
    )
}

/// An entity tag for the metadata of a set of instances: it changes whenever an instance is
/// added, deleted or re-stored (each gets a new watermark).
fn metadata_etag(instances: &[StoredInstance]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for instance in instances {
        hasher.update(&instance.instance.watermark().get().to_le_bytes());
    }
    format!("\"{:016x}-{}\"", hasher.digest(), instances.len())
}

async fn metadata(
    service: &DicomService,
    scope: RetrieveScope,
    headers: &HeaderMap,
    query: Option<&str>,
    base: String,
) -> Result<Response, ApiError> {
    let accepted = media::accepted(headers, query)
        .into_iter()
        .any(|r| match r {
            None => true,
            Some(r) => {
                !r.multipart
                    && matches!(
                        r.part_type.as_str(),
                        "application/dicom+json" | "application/json" | "application/*" | "*/*"
                    )
            }
        });
    if !accepted {
        return Err(ApiError::NotAcceptable(
            "metadata is application/dicom+json".into(),
        ));
    }
    let instances = service.instances(&scope).await?;
    let etag = metadata_etag(&instances);
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag_value)]).into_response());
    }
    let service = service.clone();
    let count = instances.len();
    // Blob reads overlap (a series of 1,000 instances would otherwise wait for 1,000 round trips
    // one after another), in order and at most METADATA_READS_IN_FLIGHT at once, so memory stays
    // bounded by that many documents.
    let items = stream::iter(instances.into_iter().enumerate())
        .map(move |(i, instance)| {
            let service = service.clone();
            let base = base.clone();
            async move {
                let json = service
                    .metadata(&instance)
                    .await
                    .map_err(std::io::Error::other)?;
                let json = with_bulk_data_uris(json, &instance, &base);
                let separator = if i + 1 < count {
                    Bytes::from_static(b",")
                } else {
                    Bytes::new()
                };
                Ok::<_, std::io::Error>(stream::iter([
                    Ok::<Bytes, std::io::Error>(json),
                    Ok(separator),
                ]))
            }
        })
        .buffered(METADATA_READS_IN_FLIGHT);
    let body = stream::once(async { Ok(Bytes::from_static(b"[")) })
        .chain(items.try_flatten())
        .chain(stream::once(async { Ok(Bytes::from_static(b"]")) }));
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/dicom+json"),
            ),
            (ETAG, etag_value),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// An instance's metadata with its BulkDataURIs (PS3.18 §F.2.6) made absolute: the stored ones
/// are relative to the instance ([`tessera_dicom::BULK_DATA_URI_PREFIX`]), and point at
/// Tessera's bulkdata resource under the request's (or the configured public) base URL.
/// Documents without any pass through untouched.
fn with_bulk_data_uris(json: Bytes, instance: &StoredInstance, base: &str) -> Bytes {
    let stored = format!("\"BulkDataURI\":\"{}", tessera_dicom::BULK_DATA_URI_PREFIX);
    let stored = stored.as_bytes();
    let mut positions = json
        .windows(stored.len())
        .enumerate()
        .filter(|(_, window)| *window == stored)
        .map(|(at, _)| at)
        .peekable();
    if positions.peek().is_none() {
        return json;
    }
    let id = instance.instance.id();
    let absolute = format!(
        "{base}/studies/{}/series/{}/instances/{}/{}",
        id.study,
        id.series,
        id.sop,
        tessera_dicom::BULK_DATA_URI_PREFIX
    );
    // As a JSON string's contents (a configured base could hold a quote or a backslash).
    let escaped = serde_json::to_string(&absolute).unwrap_or_default();
    let escaped = escaped.trim_matches('"');
    let replacement = format!("\"BulkDataURI\":\"{escaped}");
    let mut out = Vec::with_capacity(json.len() + 128);
    let mut copied = 0;
    for at in positions {
        out.extend_from_slice(&json[copied..at]);
        out.extend_from_slice(replacement.as_bytes());
        copied = at + stored.len();
    }
    out.extend_from_slice(&json[copied..]);
    Bytes::from(out)
}

/// `GET …/instances/{instance}/bulkdata/{tag}`: the value of a top-level bulk-data element
/// (OB, OD, OF, OL, OV, OW, UN) as `application/octet-stream`, read from the stored instance in
/// memory under `Tessera:Limits:MaxDecodeBytes`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}", tag = "WADO-RS", params(crate::openapi::InstancePath, ("tag" = String, Path, pattern = r"^[0-9A-Fa-f]{8}$", description = "The element tag, ggggeeee")), responses((status = 200, description = "The element value", content_type = "application/octet-stream", body = String)))]
pub async fn bulk_data(
    State(state): State<AppState>,
    Path((study, series, sop, tag)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let scope = instance_scope(&(study, series, sop))?;
    let tag = u32::from_str_radix(&tag, 16)
        .ok()
        .filter(|_| tag.len() == 8)
        .map(|t| tessera_pixels::Tag((t >> 16) as u16, (t & 0xFFFF) as u16))
        .ok_or_else(|| ApiError::BadRequest("a bulk data tag is 8 hexadecimal digits".into()))?;
    let instance = state.service.instances(&scope).await?.remove(0);
    let limit = state.limits.max_decode_bytes;
    let bytes = crate::rendered::load(&state.service, instance, limit).await?;
    let value = tokio::task::spawn_blocking(move || {
        tessera_pixels::Instance::parse(&bytes, limit)?.bulk_data(tag)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("bulk data task failed: {e}")))??;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        value,
    )
        .into_response())
}

/// Frame numbers of a frames request: 1 or more, comma separated; repeats collapse (the first
/// occurrence keeps its place) and at most `max` distinct frames are served.
pub(crate) fn frame_numbers(list: &str, max: u32) -> Result<Vec<u32>, ApiError> {
    let mut numbers = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in list.split(',') {
        let number = item
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "frame numbers must be 1 or more, comma separated: '{}'",
                    list.chars().take(100).collect::<String>()
                ))
            })?;
        if seen.insert(number) {
            numbers.push(number);
            if numbers.len() > max as usize {
                return Err(ApiError::BadRequest(format!(
                    "more than Tessera:Limits:MaxFramesPerRequest ({max}) frames requested"
                )));
            }
        }
    }
    Ok(numbers)
}

/// `GET …/instances/{instance}/frames/{1,2,…}`: frames by range reads of the stored file, one
/// frame in memory at a time.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", tag = "WADO-RS", params(crate::openapi::InstancePath, crate::openapi::FramesPath, crate::openapi::AcceptQuery), responses((status = 200, description = "The frames as stored", content((String = "multipart/related"), (String = "application/octet-stream")))))]
pub async fn frames(
    State(state): State<AppState>,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = instance_scope(&(study, series, sop))?;
    let numbers = frame_numbers(&list, state.limits.max_frames_per_request)?;
    let resource = Resource::Frames {
        single: numbers.len() == 1,
    };
    let candidates = candidates(&headers, query.as_deref(), resource)?;
    let instance = state.service.instances(&scope).await?.remove(0);
    let chosen = pick(candidates, &[instance.transfer_syntax.as_str()], resource)?;
    let multipart = chosen.multipart;
    // Frames of Little Endian native pixel data are the same bytes in Explicit VR Little
    // Endian; others are decoded.
    let native_le = matches!(
        instance.transfer_syntax.as_str(),
        "1.2.840.10008.1.2" | EXPLICIT_VR_LITTLE_ENDIAN_UID
    );
    if chosen.transcode && !native_le {
        return decoded_frames(&state, instance, numbers, multipart).await;
    }
    let ranges = state.service.frame_ranges(&instance, &numbers).await?;
    let part_type = format!(
        "application/octet-stream; transfer-syntax={}",
        if chosen.transcode {
            EXPLICIT_VR_LITTLE_ENDIAN_UID
        } else {
            instance.transfer_syntax.as_str()
        }
    );
    if !multipart {
        let Some(&range) = ranges.first() else {
            return Err(ApiError::BadRequest("no frame requested".into()));
        };
        let frame = state.service.read_frame(&instance, range).await?;
        return Ok(([(CONTENT_TYPE, part_type)], frame).into_response());
    }
    if let [range] = ranges.as_slice() {
        // One frame is read before the answer starts, so it is in memory when the boundary is
        // chosen.
        let frame = state.service.read_frame(&instance, *range).await?;
        return Ok(multipart::sized_response(
            "application/octet-stream",
            vec![Part::whole(part_type, frame)],
        ));
    }
    let instance = std::sync::Arc::new(instance);
    // Every frame's length is known from its range, so the body is sized; each frame is read
    // when its part is sent.
    let parts = ranges
        .into_iter()
        .map(|range| {
            let service = state.service.clone();
            let instance = instance.clone();
            let body = stream::once(async move {
                service
                    .read_frame(&instance, range)
                    .await
                    .map_err(std::io::Error::other)
            })
            .boxed();
            Part::streamed(part_type.clone(), Some(range.length), body)
        })
        .collect();
    Ok(multipart::sized_response("application/octet-stream", parts))
}

/// Frames decoded to native samples (Explicit VR Little Endian), the instance loaded once under
/// `Tessera:Limits:MaxDecodeBytes` and one decoded frame kept per part.
async fn decoded_frames(
    state: &AppState,
    instance: StoredInstance,
    numbers: Vec<u32>,
    multipart: bool,
) -> Result<Response, ApiError> {
    let limit = state.limits.max_decode_bytes;
    let bytes = crate::rendered::load(&state.service, instance, limit).await?;
    let frames = tokio::task::spawn_blocking(move || {
        let parsed = tessera_pixels::Instance::parse(&bytes, limit)?;
        let mut frames = Vec::with_capacity(numbers.len());
        let mut held = 0u64;
        for n in &numbers {
            let frame = parsed.native_frame(n.saturating_sub(1))?;
            held = held.saturating_add(frame.len() as u64);
            if held > limit {
                return Err(tessera_pixels::PixelError::TooLarge {
                    needed: held,
                    limit,
                });
            }
            frames.push(Bytes::from(frame));
        }
        Ok(frames)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("transcode task failed: {e}")))??;
    let part_type =
        format!("application/octet-stream; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN_UID}");
    if !multipart {
        let frame = frames.into_iter().next().unwrap_or_default();
        return Ok(([(CONTENT_TYPE, part_type)], frame).into_response());
    }
    let parts = stream::iter(
        frames
            .into_iter()
            .map(move |frame| Ok(Part::whole(part_type.clone(), frame))),
    )
    .boxed();
    Ok(multipart::response("application/octet-stream", parts))
}

#[cfg(test)]
mod tests {
    use super::frame_numbers;

    #[test]
    fn frame_numbers_collapse_repeats_and_are_limited() {
        assert_eq!(frame_numbers("3,1,3,1,2", 3).unwrap(), vec![3, 1, 2]);
        assert_eq!(
            frame_numbers("1,".repeat(10_000).trim_end_matches(','), 1).unwrap(),
            vec![1]
        );
        assert!(frame_numbers("1,2,3,4", 3).is_err());
        assert!(frame_numbers("0", 3).is_err());
        assert!(frame_numbers("1,x", 3).is_err());
    }
}
