//! Loading configuration the way operators of the original server wrote it.

use std::path::PathBuf;
use std::time::Duration;

use tessera_blob::BlobStoreLocation;
use tessera_config::{Config, ConfigError, LoadOptions};
use tessera_core::FormatType;

const DOC_BLOCK: &str = include_str!("fixtures/blob-migration-doc-block.json");

fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appsettings.json");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let (_dir, path) = file(text);
    Config::load(&LoadOptions {
        config_file: Some(path),
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: vec![],
    })
}

fn uuid(text: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(text).unwrap()
}

#[test]
fn the_documented_block_loads_unchanged() {
    for text in [DOC_BLOCK.to_owned(), format!("{{\n{DOC_BLOCK}\n}}")] {
        let m = load(&text, &[]).unwrap().settings.blob_migration;
        assert_eq!(m.format_type, FormatType::Old);
        assert!(!m.start_copy && !m.start_delete);
        assert_eq!(
            m.copy_operation_id,
            uuid("1d4689da-ca3b-4659-b0c7-7bf6c9ff25e1")
        );
        assert_eq!(
            m.delete_operation_id,
            uuid("ce38a27e-b194-4645-b47a-fe91c38c330f")
        );
        assert_eq!(
            m.cleanup_deleted_operation_id,
            uuid("d32a0469-9c27-4df3-a1e8-12f7f8fecbc8")
        );
        assert_eq!(
            m.cleanup_filter_timestamp.unwrap().to_rfc3339(),
            "2022-08-01T00:00:00+00:00"
        );
    }
}

#[test]
fn defaults_are_the_embedded_single_machine_setup() {
    let s = Config::load(&LoadOptions {
        config_file: None,
        environment: vec![],
        flags: vec![],
    })
    .unwrap()
    .settings;
    assert_eq!(s.tessera.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.tessera.index, "sqlite://./data/index.db");
    assert_eq!(
        s.tessera.blob_store,
        BlobStoreLocation::FileSystem {
            root: "./data/blobs".into()
        }
    );
    assert!(s.tessera.read_fallback);
    assert_eq!(s.blob_migration.format_type, FormatType::New);
    assert_eq!(s.blob_migration.cleanup_filter_timestamp, None);
    assert_eq!(
        s.deleted_instance_cleanup.delete_delay,
        Duration::from_secs(3 * 86_400)
    );
    assert_eq!(
        s.deleted_instance_cleanup.polling_interval,
        Duration::from_secs(180)
    );
    assert_eq!(s.functions.copy.size, 100);
    assert_eq!(s.functions.copy.max_parallel_count, 2);
    assert_eq!(s.containers.files, "dicomwebcontainer");
    assert_eq!(s.containers.metadata, "metadatacontainer");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(s.tessera.worker_threads, (cores / 2).max(1));
    assert!(s.tessera.batch_scheduling);
}

#[test]
fn batch_scheduling_can_be_turned_off_and_rejects_a_word_that_is_no_boolean() {
    let env = [("Tessera__BatchScheduling", "false")];
    let s = load("{}", &env).unwrap().settings;
    assert!(!s.tessera.batch_scheduling);
    let error = load(r#"{"Tessera":{"BatchScheduling":"sometimes"}}"#, &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("Tessera:BatchScheduling"), "{error}");
}

#[test]
fn worker_threads_are_a_positive_count() {
    let s = load(r#"{"Tessera":{"WorkerThreads":3}}"#, &[])
        .unwrap()
        .settings;
    assert_eq!(s.tessera.worker_threads, 3);
    for bad in ["0", "-1", "many", "1025"] {
        let text = format!(r#"{{"Tessera":{{"WorkerThreads":"{bad}"}}}}"#);
        let error = load(&text, &[]).unwrap_err().to_string();
        assert!(error.contains("Tessera:WorkerThreads"), "{error}");
    }
}

#[test]
fn the_environment_beats_the_file_and_flags_beat_the_environment() {
    let env = [("DicomServer__Services__BlobMigration__FormatType", "Dual")];
    let config = load(DOC_BLOCK, &env).unwrap();
    assert_eq!(config.settings.blob_migration.format_type, FormatType::Dual);
    assert!(
        config
            .describe()
            .contains("environment DicomServer__Services__BlobMigration__FormatType")
    );

    let (_dir, path) = file(r#"{"Tessera": {"Listen": "127.0.0.1:1"}}"#);
    let config = Config::load(&LoadOptions {
        config_file: Some(path),
        environment: vec![("Tessera__Listen".into(), "127.0.0.1:2".into())],
        flags: vec![(
            tessera_config::keys::LISTEN,
            "127.0.0.1:3".into(),
            "--listen",
        )],
    })
    .unwrap();
    assert_eq!(config.settings.tessera.listen.to_string(), "127.0.0.1:3");
}

#[test]
fn both_spellings_of_the_operation_ids_bind() {
    let a = "11111111-1111-1111-1111-111111111111";
    let b = "22222222-2222-2222-2222-222222222222";
    let documented = format!(
        r#"{{"DicomServer":{{"Services":{{"BlobMigration":{{"CopyFileOperationId":"{a}","DeleteFileOperationId":"{a}","CleanupDeletedFileOperationId":"{a}"}}}}}}}}"#
    );
    let m = load(&documented, &[]).unwrap().settings.blob_migration;
    assert_eq!(
        (
            m.copy_operation_id,
            m.delete_operation_id,
            m.cleanup_deleted_operation_id
        ),
        (uuid(a), uuid(a), uuid(a))
    );

    let property = format!(
        r#"{{"DicomServer":{{"Services":{{"BlobMigration":{{"CopyOperationId":"{a}","DeleteOperationId":"{a}","CleanupDeletedOperationId":"{a}"}}}}}}}}"#
    );
    let m = load(&property, &[]).unwrap().settings.blob_migration;
    assert_eq!(
        (
            m.copy_operation_id,
            m.delete_operation_id,
            m.cleanup_deleted_operation_id
        ),
        (uuid(a), uuid(a), uuid(a))
    );

    // The stronger source wins whichever spelling it uses.
    let env = [(
        "DicomServer__Services__BlobMigration__CopyFileOperationId",
        b,
    )];
    let m = load(&property, &env).unwrap().settings.blob_migration;
    assert_eq!(m.copy_operation_id, uuid(b));
}

#[test]
fn a_bad_value_names_its_key_and_source() {
    let cases = [
        (
            r#"{"DicomServer":{"Services":{"BlobMigration":{"FormatType":"Neww"}}}}"#,
            "DicomServer:Services:BlobMigration:FormatType",
        ),
        (
            r#"{"DicomServer":{"Services":{"DeletedInstanceCleanup":{"DeleteDelay":"3 days"}}}}"#,
            "DicomServer:Services:DeletedInstanceCleanup:DeleteDelay",
        ),
        (
            r#"{"DicomServer":{"Services":{"BlobMigration":{"CopyFileOperationId":"not-a-guid"}}}}"#,
            "DicomServer:Services:BlobMigration:CopyFileOperationId",
        ),
        (
            r#"{"DicomServer":{"Services":{"BlobMigration":{"CleanupFilterTimeStamp":"2022-13-45"}}}}"#,
            "DicomServer:Services:BlobMigration:CleanupFilterTimeStamp",
        ),
        (
            r#"{"DicomServer":{"Services":{"BlobMigration":{"StartCopy":"yes"}}}}"#,
            "DicomServer:Services:BlobMigration:StartCopy",
        ),
        (
            r#"{"Tessera":{"BlobStore":"ftp://x"}}"#,
            "Tessera:BlobStore",
        ),
        (r#"{"Tessera":{"Index":"mysql://x"}}"#, "Tessera:Index"),
        (
            r#"{"DicomWeb":{"DicomStore":{"ContainerName":"../x"}}}"#,
            "DicomWeb:DicomStore:ContainerName",
        ),
    ];
    for (text, key) in cases {
        let error = load(text, &[]).unwrap_err().to_string();
        assert!(error.contains(key), "{error}");
        assert!(error.contains("appsettings.json"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
    let env = [("DicomServer__Services__BlobMigration__FormatType", "Neww")];
    let error = load("{}", &env).unwrap_err().to_string();
    assert!(
        error.contains("DicomServer__Services__BlobMigration__FormatType")
            && error.contains("Neww"),
        "{error}"
    );
}

#[test]
fn secrets_are_masked() {
    let secret = "c2VjcmV0LWtleQ==";
    let text = format!(
        r#"{{"Tessera":{{"BlobStore":"az://","Index":"postgres://u:hunter2@db/tessera"}},"BlobStore":{{"ConnectionString":"AccountName=a;AccountKey={secret}"}}}}"#
    );
    let config = load(&text, &[]).unwrap();
    let shown = config.describe();
    assert!(
        !shown.contains(secret) && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(shown.contains("AccountKey=***"), "{shown}");

    let bad = format!(r#"{{"BlobStore":{{"ConnectionString":"AccountKey={secret}"}}}}"#);
    let error = load(&bad, &[]).unwrap_err().to_string();
    assert!(
        error.contains("BlobStore:ConnectionString") && !error.contains(secret),
        "{error}"
    );
}

#[test]
fn azure_needs_a_connection_string_and_missing_files_are_errors() {
    let error = load(r#"{"Tessera":{"BlobStore":"az://"}}"#, &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("BlobStore:ConnectionString"), "{error}");
    let error = Config::load(&LoadOptions {
        config_file: Some("/nonexistent/appsettings.json".into()),
        ..LoadOptions::default()
    })
    .unwrap_err();
    assert!(matches!(error, ConfigError::ReadFile { .. }));
}

#[test]
fn fault_injection_is_off_by_default_and_checked() {
    let faults = load("{}", &[]).unwrap().settings.fault_injection;
    assert!(!faults.is_active());
    let env = [
        ("Tessera__FaultInjection__FailureRate", "0.1"),
        ("Tessera__FaultInjection__Latency", "00:00:00.005"),
        ("Tessera__FaultInjection__CutStreamRate", "0.05"),
        ("Tessera__FaultInjection__Seed", "12345"),
    ];
    let faults = load("{}", &env).unwrap().settings.fault_injection;
    assert_eq!(faults.failure_rate, 0.1);
    assert_eq!(faults.latency, Duration::from_millis(5));
    assert_eq!(faults.cut_stream_rate, 0.05);
    assert_eq!(faults.seed, 12345);
    for (key, bad) in [
        ("FailureRate", "1.5"),
        ("FailureRate", "-0.1"),
        ("FailureRate", "NaN"),
        ("CutStreamRate", "ten percent"),
        ("Seed", "-1"),
        ("Latency", "5ms"),
    ] {
        let text = format!(r#"{{"Tessera":{{"FaultInjection":{{"{key}":"{bad}"}}}}}}"#);
        let error = load(&text, &[]).unwrap_err().to_string();
        assert!(
            error.contains(&format!("Tessera:FaultInjection:{key}")),
            "{error}"
        );
    }
}
