//! `DicomServer:Security:*` as operators of the original wrote it, and the checks that stop
//! start-up on an inconsistent security configuration.

use std::path::Path;
use std::time::Duration;

use tessera_auth::DataActions;
use tessera_config::{Config, ConfigError, LoadOptions};

fn load_in(dir: &Path, text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let path = dir.join("appsettings.json");
    std::fs::write(&path, text).unwrap();
    Config::load(&LoadOptions {
        config_file: Some(path),
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: vec![],
    })
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_in(tempfile::tempdir().unwrap().path(), text, env)
}

const ORIGINAL_DEFAULTS: &str = r#"{"DicomServer": {"Security": {"Enabled": false,
    "Authentication": {"Audience": null, "Authority": null}}}}"#;

const ENABLED: &str = r#"{"DicomServer": {"Security": {"Enabled": true,
    "Authentication": {"Audience": "api://dicom", "Authority": "https://login.microsoftonline.com/tenant"}}}}"#;

#[test]
fn security_is_off_by_default_and_the_originals_defaults_load() {
    for text in ["{}", ORIGINAL_DEFAULTS] {
        let security = load(text, &[]).unwrap().settings.security;
        assert!(security.authentication.is_none());
        assert!(security.audit_log);
    }
}

#[test]
fn the_documented_authentication_block_loads() {
    let auth = load(ENABLED, &[])
        .unwrap()
        .settings
        .security
        .authentication
        .unwrap();
    assert_eq!(
        auth.authority.as_str(),
        "https://login.microsoftonline.com/tenant"
    );
    assert_eq!(auth.audiences, ["api://dicom"]);
    assert_eq!(auth.roles_claim, "roles");
    assert!(auth.roles.is_none());
    assert_eq!(auth.key_refresh_interval, Duration::from_secs(300));
}

#[test]
fn audiences_list_and_environment_bind() {
    let auth = load(
        r#"{"DicomServer": {"Security": {"Enabled": true, "Authentication": {
            "Authority": "http://127.0.0.1:9999", "Audiences": ["a", "b"]}}}}"#,
        &[
            ("DicomServer__Security__Authentication__Audience", "env"),
            ("Tessera__Security__KeyRefreshInterval", "00:00:01"),
        ],
    )
    .unwrap()
    .settings
    .security
    .authentication
    .unwrap();
    assert_eq!(auth.audiences, ["env", "a", "b"]);
    assert_eq!(auth.key_refresh_interval, Duration::from_secs(1));
}

#[test]
fn roles_json_loads_from_the_configured_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("my-roles.json"),
        r#"{"roles": [{"name": "globalWriter", "dataActions": ["*"], "notDataActions": ["delete"], "scopes": ["/"]}]}"#,
    )
    .unwrap();
    let roles_file = dir.path().join("my-roles.json");
    let auth = load_in(
        dir.path(),
        ENABLED,
        &[
            ("DicomServer__Security__Authorization__Enabled", "true"),
            ("DicomServer__Security__Authorization__RolesClaim", "role"),
            ("Tessera__Security__RolesFile", roles_file.to_str().unwrap()),
        ],
    )
    .unwrap()
    .settings
    .security
    .authentication
    .unwrap();
    assert_eq!(auth.roles_claim, "role");
    let roles = auth.roles.unwrap();
    assert_eq!(
        roles.allowed(["globalwriter"]),
        DataActions::READ.union(DataActions::WRITE)
    );
}

#[test]
fn inconsistent_security_names_the_key_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let bad_roles = dir.path().join("bad.json");
    std::fs::write(
        &bad_roles,
        r#"{"roles": [{"name": "r", "dataActions": ["readAll"], "notDataActions": [], "scopes": ["/"]}]}"#,
    )
    .unwrap();
    let empty_roles = dir.path().join("empty.json");
    std::fs::write(&empty_roles, r#"{"roles": []}"#).unwrap();
    let on = ("DicomServer__Security__Enabled", "true");
    let authority = (
        "DicomServer__Security__Authentication__Authority",
        "https://idp.example.com",
    );
    let audience = ("DicomServer__Security__Authentication__Audience", "dicom");
    let authorization = ("DicomServer__Security__Authorization__Enabled", "true");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![on, audience],
            "DicomServer:Security:Authentication:Authority must be set",
        ),
        (
            vec![on, authority],
            "DicomServer:Security:Authentication:Audience must be set",
        ),
        (
            vec![
                on,
                audience,
                (
                    "DicomServer__Security__Authentication__Authority",
                    "http://idp.example.com",
                ),
            ],
            "DicomServer__Security__Authentication__Authority",
        ),
        (
            vec![authorization],
            "DicomServer:Security:Authorization:Enabled",
        ),
        (
            vec![on, authority, audience, authorization],
            "Tessera:Security:RolesFile",
        ),
        (
            vec![
                on,
                authority,
                audience,
                authorization,
                ("Tessera__Security__RolesFile", bad_roles.to_str().unwrap()),
            ],
            "unknown data action 'readAll'",
        ),
        (
            vec![
                on,
                authority,
                audience,
                authorization,
                (
                    "Tessera__Security__RolesFile",
                    empty_roles.to_str().unwrap(),
                ),
            ],
            "defines no role",
        ),
        (
            vec![("DicomServer__Security__Enabled", "yes please")],
            "DicomServer__Security__Enabled",
        ),
    ];
    for (env, expected) in cases {
        let error = load_in(dir.path(), "{}", &env).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{env:?}: '{error}' should say {expected}"
        );
        assert!(!error.contains('\n'), "one line: {error}");
    }
}

#[test]
fn cors_block_binds_and_is_off_by_default() {
    let off = load("{}", &[]).unwrap().settings.cors;
    assert!(off.origins.is_empty());
    let cors = load(
        r#"{"DicomServer": {"Cors": {"Origins": ["http://localhost:3000", "*"],
            "Headers": ["X-Custom"], "Methods": ["get", "POST"], "MaxAge": 600,
            "AllowCredentials": true}}}"#,
        &[],
    )
    .unwrap()
    .settings
    .cors;
    assert_eq!(cors.origins, ["http://localhost:3000", "*"]);
    assert_eq!(cors.headers, ["X-Custom"]);
    assert_eq!(cors.methods, ["GET", "POST"]);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert!(cors.allow_credentials);
    let bad = load("{}", &[("DicomServer__Cors__Origins__0", "http://a/b")]).unwrap_err();
    assert!(bad.to_string().contains("Origins"), "{bad}");
}
