//! `flowlens schema`: every schema version the schemas crate decodes, with its fingerprint and
//! file, or one version's `.avsc` text.

use std::io::Write;

use flowlens_schemas::RecordKind;

use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print this record's schema text (RawFlow, EnrichedFlow or Interface) instead of the list.
    record: Option<String>,
    /// With RECORD: this version instead of the current one.
    #[arg(long, requires = "record")]
    version: Option<u32>,
    /// List as an aligned table or as JSON lines.
    #[arg(short, long, value_enum, default_value = "table")]
    output: crate::queries::Output,
}

/// One known writer schema.
struct Version {
    kind: RecordKind,
    version: u32,
    current: bool,
    fingerprint: String,
    text: &'static str,
}

fn versions() -> Vec<Version> {
    RecordKind::known_writers()
        .map(|(kind, version, fingerprint, _)| {
            let history = kind.history();
            let current = version as usize == history.len() + 1;
            Version {
                kind,
                version,
                current,
                fingerprint: fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
                text: if current {
                    kind.avsc()
                } else {
                    history[version as usize - 1]
                },
            }
        })
        .collect()
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let all = versions();
    let mut out = std::io::stdout().lock();
    if let Some(record) = &args.record {
        let wanted = record.to_ascii_lowercase();
        let of_record: Vec<&Version> = all
            .iter()
            .filter(|v| {
                let full = v.kind.full_name().to_ascii_lowercase();
                full == wanted || full.rsplit('.').next() == Some(wanted.as_str())
            })
            .collect();
        anyhow::ensure!(
            !of_record.is_empty(),
            "no record `{record}`: one of {}",
            RecordKind::ALL.map(|k| k.full_name()).join(", ")
        );
        let chosen = match args.version {
            Some(n) => of_record
                .iter()
                .copied()
                .find(|v| v.version == n)
                .ok_or_else(|| {
                    let known: Vec<String> =
                        of_record.iter().map(|v| v.version.to_string()).collect();
                    anyhow::anyhow!("{record} has no version {n}: known {}", known.join(", "))
                })?,
            None => of_record
                .iter()
                .copied()
                .find(|v| v.current)
                .expect("a current version"),
        };
        return crate::quiet_on_broken_pipe(write!(out, "{}", chosen.text));
    }
    let result = match args.output {
        crate::queries::Output::Json => all.iter().try_for_each(|v| {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "record": v.kind.full_name(),
                    "version": v.version,
                    "current": v.current,
                    "fingerprint": v.fingerprint,
                    "file": v.kind.avsc_file(v.version),
                })
            )
        }),
        crate::queries::Output::Table => {
            let mut table = Table::new(
                ["RECORD", "VERSION", "FINGERPRINT", "CURRENT", "FILE"]
                    .map(String::from)
                    .to_vec(),
                vec![false, true, false, false, false],
            );
            for v in &all {
                table.push(vec![
                    v.kind.full_name().to_string(),
                    v.version.to_string(),
                    v.fingerprint.clone(),
                    if v.current { "yes" } else { "no" }.to_string(),
                    format!("schemas/{}", v.kind.avsc_file(v.version)),
                ]);
            }
            table.write(&mut out)
        }
    };
    crate::quiet_on_broken_pipe(result)
}
