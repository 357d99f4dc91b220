//! Azure connection strings and container creation.
//!
//! `object_store` addresses blobs inside an existing container but cannot create one, and it does
//! not read Azure connection strings. Both are small, stable parts of the Azure REST API, so they
//! are written here rather than pulling in a second Azure SDK: one Shared Key–signed
//! `Create Container` request (learn.microsoft.com "Authorize with Shared Key").

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::BlobError;

/// The account and key Azurite and the old storage emulator accept (public, documented).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_ENDPOINT: &str = "http://127.0.0.1:10000";
/// A REST API version every Azure Storage service and Azurite release of recent years accepts.
const API_VERSION: &str = "2021-08-06";

/// What Tessera needs out of an Azure Storage connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureConnection {
    /// Storage account name.
    pub account: String,
    /// Shared key of the account (a secret: never printed).
    pub key: String,
    /// Base URL of the blob service, without a trailing slash: containers are below it.
    pub blob_endpoint: String,
}

impl std::fmt::Debug for AzureConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConnection")
            .field("account", &self.account)
            .field("blob_endpoint", &self.blob_endpoint)
            .finish_non_exhaustive()
    }
}

/// Why a connection string cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A required part is absent.
    #[error("the connection string has no {0}")]
    Missing(&'static str),
    /// A part that Tessera does not support yet.
    #[error("{0} in a connection string is not supported; use AccountName and AccountKey")]
    Unsupported(&'static str),
    /// A `key=value` pair without `=`.
    #[error("the connection string has a part without '=': '{0}'")]
    Malformed(String),
}

impl AzureConnection {
    /// Parses `UseDevelopmentStorage=true[;DevelopmentStorageProxyUri=…]` or
    /// `AccountName=…;AccountKey=…[;BlobEndpoint=…|;DefaultEndpointsProtocol=…;EndpointSuffix=…]`.
    /// Keys are case-insensitive, as in the Azure SDKs.
    pub fn parse(connection_string: &str) -> Result<Self, ConnectionStringError> {
        let mut parts = std::collections::HashMap::new();
        for part in connection_string
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ConnectionStringError::Malformed(
                    part.split('=').next().unwrap_or_default().to_owned(),
                )
            })?;
            parts.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let get = |key: &str| parts.get(key).filter(|v| !v.is_empty()).cloned();
        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let base = get("developmentstorageproxyuri").unwrap_or_else(|| DEV_ENDPOINT.into());
            return Ok(Self {
                account: DEV_ACCOUNT.into(),
                key: DEV_KEY.into(),
                blob_endpoint: format!("{}/{DEV_ACCOUNT}", base.trim_end_matches('/')),
            });
        }
        if get("sharedaccesssignature").is_some() {
            return Err(ConnectionStringError::Unsupported("SharedAccessSignature"));
        }
        let account = get("accountname").ok_or(ConnectionStringError::Missing("AccountName"))?;
        let key = get("accountkey").ok_or(ConnectionStringError::Missing("AccountKey"))?;
        let blob_endpoint = match get("blobendpoint") {
            Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
            None => {
                let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
                let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        Ok(Self {
            account,
            key,
            blob_endpoint,
        })
    }

    /// Creates `container` if it does not exist (the original does this at start-up, orig A.1).
    pub async fn ensure_container(&self, container: &str) -> Result<(), BlobError> {
        let url = format!("{}/{container}?restype=container", self.blob_endpoint);
        let open_error = |reason: String| BlobError::Open {
            endpoint: self.blob_endpoint.clone(),
            reason,
        };
        let parsed = url::Url::parse(&url).map_err(|e| open_error(format!("bad endpoint: {e}")))?;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{}{}\nrestype:container",
            self.account,
            parsed.path()
        );
        let signature = self
            .sign(&string_to_sign)
            .map_err(|e| open_error(format!("bad AccountKey: {e}")))?;
        let response = reqwest::Client::new()
            .put(parsed)
            .header("x-ms-date", date)
            .header("x-ms-version", API_VERSION)
            .header("Content-Length", "0")
            .header(
                "Authorization",
                format!("SharedKey {}:{signature}", self.account),
            )
            .send()
            .await
            .map_err(|e| open_error(format!("unreachable: {e}")))?;
        match response.status().as_u16() {
            201 | 409 => Ok(()),
            status => {
                let body = response.text().await.unwrap_or_default();
                let code = body
                    .split("<Code>")
                    .nth(1)
                    .and_then(|rest| rest.split("</Code>").next())
                    .unwrap_or("");
                Err(open_error(format!(
                    "creating container '{container}' answered {status} {code}"
                )))
            }
        }
    }

    fn sign(&self, string_to_sign: &str) -> Result<String, String> {
        let key = BASE64.decode(&self.key).map_err(|e| e.to_string())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(string_to_sign.as_bytes());
        Ok(BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Replaces the secret parts of a connection string (account key, SAS) with `***`, for logs and
/// `tessera config`.
pub fn mask_connection_string(connection_string: &str) -> String {
    connection_string
        .split(';')
        .map(|part| match part.split_once('=') {
            Some((key, _))
                if ["accountkey", "sharedaccesssignature"]
                    .contains(&key.trim().to_ascii_lowercase().as_str()) =>
            {
                format!("{key}=***")
            }
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage_is_azurite_on_its_default_port() {
        let c = AzureConnection::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.account, "devstoreaccount1");
        assert_eq!(c.blob_endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(c.key, DEV_KEY);
        let proxied = AzureConnection::parse(
            "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://127.0.0.1:4711/",
        )
        .unwrap();
        assert_eq!(
            proxied.blob_endpoint,
            "http://127.0.0.1:4711/devstoreaccount1"
        );
    }

    #[test]
    fn account_strings_build_the_public_endpoint() {
        let c = AzureConnection::parse(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(c.blob_endpoint, "https://acme.blob.core.windows.net");
        let explicit =
            AzureConnection::parse("accountname=a;accountkey=a2V5;BlobEndpoint=http://h:1/a/")
                .unwrap();
        assert_eq!(explicit.blob_endpoint, "http://h:1/a");
    }

    #[test]
    fn incomplete_strings_say_what_is_missing() {
        assert_eq!(
            AzureConnection::parse("AccountName=a"),
            Err(ConnectionStringError::Missing("AccountKey"))
        );
        assert_eq!(
            AzureConnection::parse("BlobEndpoint=x;SharedAccessSignature=sv=1"),
            Err(ConnectionStringError::Unsupported("SharedAccessSignature"))
        );
        assert!(matches!(
            AzureConnection::parse("garbage"),
            Err(ConnectionStringError::Malformed(_))
        ));
    }

    #[test]
    fn masking_hides_keys_and_signatures() {
        let masked = mask_connection_string("AccountName=a;AccountKey=c2VjcmV0;EndpointSuffix=x");
        assert_eq!(masked, "AccountName=a;AccountKey=***;EndpointSuffix=x");
        assert!(
            !format!(
                "{:?}",
                AzureConnection::parse("AccountName=a;AccountKey=c2VjcmV0").unwrap()
            )
            .contains("c2VjcmV0")
        );
    }
}
