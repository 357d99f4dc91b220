//! Content negotiation for DICOMweb media types (PS3.18 §8.7, orig D.3).
//!
//! Each media range is parsed by the `mime` crate. Before that, [`lenient_range`] quotes the
//! parameter values that DICOMweb clients send unquoted although RFC 9110 wants them quoted
//! (OHIF sends `type=application/octet-stream`, whose `/` is no token character): `mime`
//! refuses such a value, and no kept parser is more lenient, so this one step is ours.

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;

/// A requested representation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// `multipart/related` (with this `type`), or a single part of this media type.
    pub multipart: bool,
    /// The media type of each part (or of the body), lower case; `type/*` ranges kept as such.
    pub part_type: String,
    /// The transfer syntax asked for; `None` when any (`*`, or not said).
    pub transfer_syntax: Option<String>,
}

/// One entry of the client's preferences: `None` takes anything (`*/*`).
pub type Preference = Option<Requested>;

/// The representations the client takes, most preferred first: the `accept` query parameter
/// (PS3.18 §8.3.3.1: the same syntax as the header; where it is given, its media types are the
/// Acceptable Media Types, §8.7.5) or else the `Accept` header. Ranges are ordered by their
/// q-value, the order they were written in among equals; `q=0` ranges and ranges that cannot
/// be parsed are left out. Without either, the client takes anything.
pub fn accepted(headers: &HeaderMap, query: Option<&str>) -> Vec<Preference> {
    let from_query = query.and_then(accept_query_parameter);
    let value = match from_query {
        Some(value) => value,
        None => {
            let values: Vec<&str> = headers
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                return vec![None];
            }
            values.join(",")
        }
    };
    let mut ranges: Vec<(u16, Preference)> = split_unquoted(&value, ',')
        .into_iter()
        .filter_map(|range| parse_range(&range))
        .filter(|(quality, _)| *quality > 0)
        .collect();
    // Stable: ranges of equal quality keep the order the client wrote them in.
    ranges.sort_by_key(|range| std::cmp::Reverse(range.0));
    ranges
        .into_iter()
        .map(|(_, preference)| preference)
        .collect()
}

/// The value of the `accept` query parameter, if the query string has one (case-sensitive
/// name, §8.3.3.1; repeated parameters are joined as a list).
fn accept_query_parameter(query: &str) -> Option<String> {
    let values: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "accept")
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.trim().is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A media type (a `Content-Type`, one media range) read as leniently as [`lenient_range`]
/// allows: `multipart/related; type=application/dicom; boundary=x` included.
pub fn lenient_media_type(value: &str) -> Option<mime::Mime> {
    lenient_range(value)?.parse().ok()
}

/// One media range with its quality in thousandths (`q=0.5` → 500).
fn parse_range(range: &str) -> Option<(u16, Preference)> {
    let mime = lenient_media_type(range)?;
    let param = |name: &str| {
        mime.params()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().trim().to_owned())
    };
    let quality = match param("q") {
        Some(q) => parse_quality(&q)?,
        None => 1000,
    };
    let transfer_syntax = param("transfer-syntax").filter(|ts| ts != "*");
    if mime.type_() == mime::STAR {
        // `*/*` with a transfer syntax still says which one.
        return Some((
            quality,
            transfer_syntax.map(|ts| Requested {
                multipart: false,
                part_type: "*/*".into(),
                transfer_syntax: Some(ts),
            }),
        ));
    }
    let essence = mime.essence_str().to_ascii_lowercase();
    let requested = if essence == "multipart/related" {
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
    };
    Some((quality, Some(requested)))
}

/// An RFC 9110 qvalue (`0`, `1`, `0.5`, `1.000`) in thousandths.
fn parse_quality(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The media range with white space around `;` and `=` removed and every parameter value that
/// is not a token quoted, so that `mime` reads what clients commonly send.
fn lenient_range(range: &str) -> Option<String> {
    let mut pieces = split_unquoted(range, ';').into_iter();
    let mut out = pieces.next()?.trim().to_owned();
    for piece in pieces {
        let Some((name, value)) = piece.split_once('=') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            continue;
        }
        out.push_str("; ");
        out.push_str(name);
        out.push('=');
        if value.starts_with('"') || value.bytes().all(is_token) && !value.is_empty() {
            out.push_str(value);
        } else {
            out.push('"');
            out.push_str(&value.replace(['"', '\\'], ""));
            out.push('"');
        }
    }
    Some(out)
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits on `separator` outside double quotes; trims and drops empty pieces.
fn split_unquoted(value: &str, separator: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        if c == separator && !quoted {
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

/// Transfer syntaxes Tessera never produces whatever it stores: video streams (MPEG-2,
/// MPEG-4, HEVC), which the original refused too (orig D.3) and which have no frames to serve.
fn is_video_syntax(uid: &str) -> bool {
    uid.strip_prefix("1.2.840.10008.1.2.4.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<u16>().ok())
        .is_some_and(|n| (100..=108).contains(&n))
}

/// Whether Tessera could ever answer with `transfer_syntax` (`None`: as stored): a transfer
/// syntax that dicom-rs knows and that is not a video syntax. Checked before the resource is
/// looked up, so an unsupported `Accept` is 406 whether or not the resource exists.
pub fn producible(transfer_syntax: Option<&str>) -> bool {
    transfer_syntax
        .is_none_or(|uid| !is_video_syntax(uid) && tessera_dicom::is_known_transfer_syntax(uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> Vec<Preference> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        accepted(&headers, None)
    }

    fn requested(multipart: bool, part_type: &str, ts: Option<&str>) -> Preference {
        Some(Requested {
            multipart,
            part_type: part_type.into(),
            transfer_syntax: ts.map(Into::into),
        })
    }

    #[test]
    fn parses_dicomweb_accept_values() {
        assert_eq!(accepted(&HeaderMap::new(), None), vec![None]);
        assert_eq!(accept("*/*"), vec![None]);
        let parsed = accept(
            r#"multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, application/dicom"#,
        );
        assert_eq!(
            parsed,
            vec![
                requested(true, "application/dicom", Some("1.2.840.10008.1.2.4.50")),
                requested(false, "application/dicom", None),
            ]
        );
        let any = accept("application/dicom; transfer-syntax=*");
        assert_eq!(any, vec![requested(false, "application/dicom", None)]);
    }

    #[test]
    fn unquoted_parameters_and_loose_white_space_are_read() {
        let ohif = accept("multipart/related; type=application/octet-stream; transfer-syntax=*");
        assert_eq!(
            ohif,
            vec![requested(true, "application/octet-stream", None)]
        );
        let loose = accept(
            r#"multipart/related ;type = "application/dicom" ; transfer-syntax = 1.2.840.10008.1.2.1"#,
        );
        assert_eq!(
            loose,
            vec![requested(
                true,
                "application/dicom",
                Some("1.2.840.10008.1.2.1")
            )]
        );
        assert_eq!(
            accept("Multipart/Related; Type=Application/DICOM"),
            vec![requested(true, "application/dicom", None)]
        );
    }

    #[test]
    fn q_values_order_the_list_and_zero_refuses() {
        let parsed = accept(
            "application/dicom;q=0.2, multipart/related; type=application/dicom; q=0.9, */*;q=0.1, image/png;q=0",
        );
        assert_eq!(
            parsed,
            vec![
                requested(true, "application/dicom", None),
                requested(false, "application/dicom", None),
                None,
            ]
        );
        // Equal qualities keep the written order; bad q-values drop the range.
        assert_eq!(
            accept("image/jpeg, application/json;q=1.0, text/plain;q=2, text/html;q=0.1234"),
            vec![
                requested(false, "image/jpeg", None),
                requested(false, "application/json", None),
            ]
        );
        assert_eq!(parse_quality("0.5"), Some(500));
        assert_eq!(parse_quality("1"), Some(1000));
        assert_eq!(parse_quality("1.001"), None);
    }

    #[test]
    fn the_accept_query_parameter_wins_over_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        let query = "accept=multipart%2Frelated%3B%20type%3D%22application%2Fdicom%22&other=1";
        assert_eq!(
            accepted(&headers, Some(query)),
            vec![requested(true, "application/dicom", None)]
        );
        assert_eq!(accepted(&headers, Some("offset=1")), vec![None]);
    }

    #[test]
    fn video_and_unknown_syntaxes_are_never_produced() {
        assert!(producible(None));
        assert!(producible(Some("1.2.840.10008.1.2.1")));
        assert!(producible(Some("1.2.840.10008.1.2.4.50")));
        assert!(!producible(Some("1.2.840.10008.1.2.4.100")));
        assert!(!producible(Some("1.2.840.10008.1.2.4.101.1")));
        assert!(!producible(Some("1.2.3.4")));
    }
}
