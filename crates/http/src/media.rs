//! Content negotiation for DICOMweb media types (orig D.3).

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;

/// A requested representation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// `multipart/related` (with this `type`), or a single part of this media type.
    pub multipart: bool,
    /// The media type of each part (or of the body).
    pub part_type: String,
    /// The transfer syntax asked for; `None` when any (`*`, or not said).
    pub transfer_syntax: Option<String>,
}

/// Parses `Accept` into the representations the client takes, in order. Without `Accept`, or
/// with `*/*`, the client takes anything.
pub fn accepted(headers: &HeaderMap) -> Vec<Option<Requested>> {
    let values: Vec<&str> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return vec![None];
    }
    split_media_ranges(&values.join(","))
        .into_iter()
        .filter_map(|range| {
            let mime: mime::Mime = quote_parameter_values(&range).parse().ok()?;
            if mime.type_() == mime::STAR {
                return Some(None);
            }
            let param = |name: &str| {
                mime.get_param(name)
                    .map(|v| v.as_str().trim_matches('"').to_owned())
            };
            let transfer_syntax = param("transfer-syntax").filter(|ts| ts != "*");
            let essence = mime.essence_str().to_ascii_lowercase();
            Some(Some(if essence == "multipart/related" {
                Requested {
                    multipart: true,
                    part_type: param("type")
                        .unwrap_or_else(|| "application/dicom".into())
                        .to_ascii_lowercase(),
                    transfer_syntax,
                }
            } else {
                Requested {
                    multipart: false,
                    part_type: essence,
                    transfer_syntax,
                }
            }))
        })
        .collect()
}

/// `range` with every unquoted parameter value quoted: clients such as OHIF send
/// `type=application/octet-stream`, whose `/` the `mime` parser refuses outside quotes.
fn quote_parameter_values(range: &str) -> String {
    let mut pieces = range.split(';');
    let mut out = pieces.next().unwrap_or_default().to_owned();
    for piece in pieces {
        out.push(';');
        match piece.split_once('=') {
            Some((name, value)) if !value.trim().starts_with('"') => {
                out.push_str(&format!("{name}=\"{}\"", value.trim()));
            }
            _ => out.push_str(piece),
        }
    }
    out
}

/// Splits an `Accept` value on the commas between media ranges (not those inside quotes).
fn split_media_ranges(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        if c == ',' && !quoted {
            out.push(String::new());
            continue;
        }
        if c == '"' {
            quoted = !quoted;
        }
        if let Some(current) = out.last_mut() {
            current.push(c);
        }
    }
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> Vec<Option<Requested>> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        accepted(&headers)
    }

    #[test]
    fn parses_dicomweb_accept_values() {
        assert_eq!(accepted(&HeaderMap::new()), vec![None]);
        assert_eq!(accept("*/*"), vec![None]);
        let parsed = accept(
            r#"multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, application/dicom"#,
        );
        assert_eq!(parsed.len(), 2);
        let first = parsed[0].clone().unwrap();
        assert!(first.multipart);
        assert_eq!(first.part_type, "application/dicom");
        assert_eq!(
            first.transfer_syntax.as_deref(),
            Some("1.2.840.10008.1.2.4.50")
        );
        assert!(!parsed[1].clone().unwrap().multipart);
        let unquoted =
            accept("multipart/related; type=application/octet-stream; transfer-syntax=*");
        let unquoted = unquoted[0].clone().unwrap();
        assert!(unquoted.multipart);
        assert_eq!(unquoted.part_type, "application/octet-stream");
        assert_eq!(unquoted.transfer_syntax, None);
        let any = accept("application/dicom; transfer-syntax=*");
        assert_eq!(any[0].clone().unwrap().transfer_syntax, None);
    }
}
