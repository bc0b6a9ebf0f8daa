//! `flowlens schema` and `flowlens check` as a binary. Schema: every `.avsc` under schemas/avro
//! (history included) is listed once, with the fingerprint fastavro computes from the file (an
//! independent implementation, run in the consumer venv), and its text is printed back exactly.
//! Check: the annotated example configurations pass; a bad key makes `check` exit 2 naming the
//! key, with the same message and exit code as the stage's own binary given the same input.
//!
//! Needs /opt/flowlens-consumer-venv (fastavro) and the stage binaries next to `flowlens`
//! (`cargo build -p flowlens-collector -p flowlens-enricher -p flowlens-sink`, as
//! scripts/test.sh does); `FLOWLENS_SKIP_CONSUMER_VENV=1` skips the fastavro comparison.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flowlens_testkit::{repo_root, require};
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_flowlens");
const CONSUMER_PYTHON: &str = "/opt/flowlens-consumer-venv/bin/python";

fn flowlens(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// fastavro's fingerprint of every .avsc file, by path relative to schemas/.
fn fastavro_fingerprints() -> BTreeMap<String, String> {
    let script = r#"
import glob, json, os, sys
import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
root = sys.argv[1]
for path in sorted(glob.glob(os.path.join(root, "avro", "*.avsc")) + glob.glob(os.path.join(root, "avro", "history", "*.avsc"))):
    with open(path) as f:
        schema = fastavro.parse_schema(json.load(f))
    print(os.path.relpath(path, root), fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
"#;
    let out = Command::new(CONSUMER_PYTHON)
        .args(["-c", script])
        .arg(repo_root().join("schemas"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let (file, fp) = l.split_once(' ').unwrap();
            (file.to_string(), fp.to_string())
        })
        .collect()
}

#[test]
fn schema_lists_every_version_with_independent_fingerprints() {
    let out = flowlens(&["schema", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: BTreeMap<String, String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let j: Json = serde_json::from_str(l).unwrap();
            (
                j["file"].as_str().unwrap().to_string(),
                j["fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    if !require(CONSUMER_PYTHON, "CONSUMER_VENV") {
        assert_eq!(listed, fastavro_fingerprints());
    }
    let table = text(&flowlens(&["schema"]).stdout);
    assert!(
        table.starts_with("RECORD") && table.contains("schemas/avro/enriched_flow.avsc"),
        "{table}"
    );
    assert_eq!(table.lines().count(), listed.len() + 1, "{table}");

    let schemas = repo_root().join("schemas");
    let current = flowlens(&["schema", "EnrichedFlow"]);
    assert_eq!(
        text(&current.stdout),
        std::fs::read_to_string(schemas.join("avro/enriched_flow.avsc")).unwrap()
    );
    let v1 = flowlens(&["schema", "io.flowlens.enrichedflow", "--version", "1"]);
    assert_eq!(
        text(&v1.stdout),
        std::fs::read_to_string(schemas.join("avro/history/enriched_flow.v1.avsc")).unwrap()
    );
    let missing = flowlens(&["schema", "RawFlow", "--version", "99"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("no version 99"),
        "{}",
        text(&missing.stderr)
    );
    let unknown = flowlens(&["schema", "Packet"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("io.flowlens.EnrichedFlow"));
}

/// The stage's own binary, built next to `flowlens`.
fn stage_binary(name: &str) -> PathBuf {
    let path = Path::new(BIN).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build -p flowlens-collector -p flowlens-enricher -p flowlens-sink",
        path.display()
    );
    path
}

fn toml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// `flowlens check` and the stage binary on the same file and environment: both exit 2 with the
/// same message, which names `key`.
fn refused_like_the_stage(stage: &str, file: &Path, env: &[(&str, &str)], key: &str) {
    let mut check = Command::new(BIN);
    check
        .args(["check", "--stage", stage, "--config"])
        .arg(file);
    let mut own = Command::new(stage_binary(&format!("flowlens-{stage}")));
    own.arg("--config").arg(file);
    for (k, v) in env {
        check.env(k, v);
        own.env(k, v);
    }
    let (check, own) = (check.output().unwrap(), own.output().unwrap());
    assert_eq!(check.status.code(), Some(2), "{}", text(&check.stderr));
    assert_eq!(own.status.code(), Some(2), "{}", text(&own.stderr));
    let message = text(&own.stderr);
    let message = message
        .trim()
        .strip_prefix(&format!("flowlens-{stage}: "))
        .unwrap_or_else(|| panic!("{message}"));
    let said = text(&check.stderr);
    assert!(
        said.contains(message),
        "check said {said:?}, the stage {message:?}"
    );
    assert!(said.contains(key), "{said}");
}

#[test]
fn check_validates_like_each_stage() {
    for (stage, example) in [
        ("collector", "collector/collector.example.toml"),
        ("enricher", "enricher/enricher.example.toml"),
        ("sink", "sink/sink.example.toml"),
    ] {
        let path = repo_root().join(example);
        let ok = flowlens(&[
            "check",
            "--stage",
            stage,
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_eq!(ok.status.code(), Some(0), "{stage}: {}", text(&ok.stderr));
        assert!(text(&ok.stdout).contains(&format!("valid {stage} configuration")));

        let typo = toml("[kafka]\nbrokkers = [\"127.0.0.1:9092\"]\n");
        refused_like_the_stage(stage, typo.path(), &[], "brokkers");
        let broker = toml("[kafka]\nbrokers = [\"no-port\"]\n");
        refused_like_the_stage(stage, broker.path(), &[], "kafka.brokers");
        let empty = toml("");
        let prefix = format!("FLOWLENS_{}__TELEMETRY__LOG_FORMAT", stage.to_uppercase());
        refused_like_the_stage(
            stage,
            empty.path(),
            &[(&prefix, "xml")],
            "telemetry.log_format",
        );
        let missing = flowlens(&["check", "--stage", stage, "--config", "/nonexistent/x.toml"]);
        assert_eq!(missing.status.code(), Some(2));
        assert!(text(&missing.stderr).contains("/nonexistent/x.toml"));
    }
    refused_like_the_stage(
        "sink",
        toml("[batch]\nmax_rows = 0\n").path(),
        &[],
        "batch.max_rows",
    );
    // Without --config: the defaults and the environment, as the stage without --config.
    let defaults = flowlens(&["check", "--stage", "enricher"]);
    assert_eq!(
        defaults.status.code(),
        Some(0),
        "{}",
        text(&defaults.stderr)
    );
}
