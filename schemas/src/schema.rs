//! The embedded `.avsc` contract: parsed once, with fingerprints, the record registry and the `AvroRecord` trait.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::schema::{Name, UnionSchema};
use apache_avro::{GenericSingleObjectReader, Schema};

use crate::error::{hex, SchemaError};

/// Text of `avro/raw_flow.avsc`, the writer schema of [`crate::RawFlow`].
pub const RAW_FLOW_AVSC: &str = include_str!("../avro/raw_flow.avsc");
/// Text of `avro/interface.avsc`, the writer schema of [`crate::Interface`].
pub const INTERFACE_AVSC: &str = include_str!("../avro/interface.avsc");
/// Text of `avro/enriched_flow.avsc`, the writer schema of [`crate::EnrichedFlow`].
pub const ENRICHED_FLOW_AVSC: &str = include_str!("../avro/enriched_flow.avsc");

/// Text of `avro/history/enriched_flow.v1.avsc`: version 1 of `EnrichedFlow` (before pod UIDs,
/// roles, locality and the interface pod). Messages written with it still decode.
pub const ENRICHED_FLOW_V1_AVSC: &str = include_str!("../avro/history/enriched_flow.v1.avsc");

/// Text of `avro/history/enriched_flow.v2.avsc`: version 2 of `EnrichedFlow` (before the fields
/// RawFlow version 2 added: reverse counters, TCP/drop/process/tunnel fields, `duplicate`).
pub const ENRICHED_FLOW_V2_AVSC: &str = include_str!("../avro/history/enriched_flow.v2.avsc");

/// Text of `avro/history/enriched_flow.v3.avsc`: version 3 of `EnrichedFlow` (before `origin`).
pub const ENRICHED_FLOW_V3_AVSC: &str = include_str!("../avro/history/enriched_flow.v3.avsc");

/// Text of `avro/history/enriched_flow.v4.avsc`: version 4 of `EnrichedFlow` (before `dns`).
pub const ENRICHED_FLOW_V4_AVSC: &str = include_str!("../avro/history/enriched_flow.v4.avsc");

/// Text of `avro/history/raw_flow.v3.avsc`: version 3 of `RawFlow` (before `dns`).
pub const RAW_FLOW_V3_AVSC: &str = include_str!("../avro/history/raw_flow.v3.avsc");

/// Text of `avro/history/raw_flow.v2.avsc`: version 2 of `RawFlow` (before `origin`).
pub const RAW_FLOW_V2_AVSC: &str = include_str!("../avro/history/raw_flow.v2.avsc");

/// Text of `avro/history/raw_flow.v1.avsc`: version 1 of `RawFlow` (one direction per record,
/// before reverse counters, TCP/drop/process/tunnel fields and `duplicate`).
pub const RAW_FLOW_V1_AVSC: &str = include_str!("../avro/history/raw_flow.v1.avsc");

/// A flowlens record type, bound to its embedded writer schema.
pub trait AvroRecord: Sized {
    /// The parsed writer schema (parsed once per process).
    fn schema() -> &'static Schema;
    /// CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, in the byte
    /// order of the single-object header (little-endian).
    fn fingerprint() -> [u8; 8];
}

/// The record types of the contract, e.g. to route a message by its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `io.flowlens.RawFlow`
    RawFlow,
    /// `io.flowlens.Interface`
    Interface,
    /// `io.flowlens.EnrichedFlow`
    EnrichedFlow,
}

impl RecordKind {
    /// All record kinds.
    pub const ALL: [RecordKind; 3] = [
        RecordKind::RawFlow,
        RecordKind::Interface,
        RecordKind::EnrichedFlow,
    ];

    /// Avro full name, e.g. `io.flowlens.RawFlow`.
    pub fn full_name(self) -> &'static str {
        match self {
            RecordKind::RawFlow => "io.flowlens.RawFlow",
            RecordKind::Interface => "io.flowlens.Interface",
            RecordKind::EnrichedFlow => "io.flowlens.EnrichedFlow",
        }
    }

    /// The `.avsc` text of this record's writer schema.
    pub fn avsc(self) -> &'static str {
        match self {
            RecordKind::RawFlow => RAW_FLOW_AVSC,
            RecordKind::Interface => INTERFACE_AVSC,
            RecordKind::EnrichedFlow => ENRICHED_FLOW_AVSC,
        }
    }

    /// The parsed writer schema.
    pub fn schema(self) -> &'static Schema {
        &self.compiled().schema
    }

    /// The writer schema's fingerprint (header byte order).
    pub fn fingerprint(self) -> [u8; 8] {
        self.compiled().fingerprint
    }

    /// The record kind whose writer schema has this fingerprint, if any.
    pub fn from_fingerprint(fingerprint: [u8; 8]) -> Option<RecordKind> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.fingerprint() == fingerprint)
    }

    /// `.avsc` texts of the earlier versions of this record, oldest first (the current one is
    /// [`RecordKind::avsc`]). Messages written with any of them decode into today's struct.
    pub fn history(self) -> &'static [&'static str] {
        match self {
            RecordKind::EnrichedFlow => &[
                ENRICHED_FLOW_V1_AVSC,
                ENRICHED_FLOW_V2_AVSC,
                ENRICHED_FLOW_V3_AVSC,
                ENRICHED_FLOW_V4_AVSC,
            ],
            RecordKind::RawFlow => &[RAW_FLOW_V1_AVSC, RAW_FLOW_V2_AVSC, RAW_FLOW_V3_AVSC],
            RecordKind::Interface => &[],
        }
    }

    /// Every writer schema this crate can decode: (kind, version, fingerprint, parsed schema),
    /// versions numbered from 1, the current version last per kind.
    pub fn known_writers() -> impl Iterator<Item = (RecordKind, u32, [u8; 8], &'static Schema)> {
        WRITERS
            .iter()
            .map(|w| (w.kind, w.version, w.fingerprint, &w.schema))
    }

    /// Where version `version` of this record's schema lives under `schemas/`, by the evolution
    /// rule's convention: `avro/<record>.avsc` for the current one, `avro/history/<record>.v<N>.avsc`
    /// for earlier ones (e.g. `avro/history/enriched_flow.v1.avsc`).
    pub fn avsc_file(self, version: u32) -> String {
        let name = self.full_name().rsplit('.').next().unwrap_or_default();
        let mut snake = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        if version as usize == self.history().len() + 1 {
            format!("avro/{snake}.avsc")
        } else {
            format!("avro/history/{snake}.v{version}.avsc")
        }
    }

    /// The record kind of any known version with this fingerprint (current or historic).
    pub fn of_any_version(fingerprint: [u8; 8]) -> Option<RecordKind> {
        writer(fingerprint).map(|w| w.kind)
    }

    pub(crate) fn compiled(self) -> &'static Compiled {
        match self {
            RecordKind::RawFlow => &RAW_FLOW,
            RecordKind::Interface => &INTERFACE,
            RecordKind::EnrichedFlow => &ENRICHED_FLOW,
        }
    }

    pub(crate) fn for_fingerprint(fingerprint: [u8; 8]) -> Result<RecordKind, SchemaError> {
        RecordKind::of_any_version(fingerprint).ok_or_else(|| SchemaError::UnknownFingerprint {
            found: hex(&fingerprint),
        })
    }
}

/// Everything derived once from one `.avsc`.
pub(crate) struct Compiled {
    /// The schema as parsed from the file (source of the fingerprint).
    pub schema: Schema,
    pub fingerprint: [u8; 8],
    /// The same schema with every named-type reference replaced by its definition.
    ///
    /// apache-avro 0.21's public serde writer (`write_avro_datum_ref`) resolves no names, so a
    /// field typed `"IPv6Address"` (a reference) would fail to serialize; this copy has none.
    pub inlined: Schema,
    /// Cached name resolution for decoding.
    pub reader: GenericSingleObjectReader,
}

fn compile(kind: RecordKind) -> Compiled {
    let schema = Schema::parse_str(kind.avsc())
        .unwrap_or_else(|e| panic!("embedded {} schema does not parse: {e}", kind.full_name()));
    let fingerprint: [u8; 8] = schema
        .fingerprint::<Rabin>()
        .bytes
        .try_into()
        .expect("Rabin fingerprints are 8 bytes");
    let inlined = inlined(&schema);
    let reader = GenericSingleObjectReader::new(schema.clone())
        .unwrap_or_else(|e| panic!("embedded {} schema does not resolve: {e}", kind.full_name()));
    Compiled {
        schema,
        fingerprint,
        inlined,
        reader,
    }
}

static RAW_FLOW: LazyLock<Compiled> = LazyLock::new(|| compile(RecordKind::RawFlow));
static INTERFACE: LazyLock<Compiled> = LazyLock::new(|| compile(RecordKind::Interface));
static ENRICHED_FLOW: LazyLock<Compiled> = LazyLock::new(|| compile(RecordKind::EnrichedFlow));

/// One known writer schema version (current or historic).
pub(crate) struct Writer {
    pub kind: RecordKind,
    pub version: u32,
    pub fingerprint: [u8; 8],
    pub schema: Schema,
    /// How its datums are laid out, for the bound check before apache-avro reads one.
    pub layout: Option<crate::binary::Kind>,
}

static WRITERS: LazyLock<Vec<Writer>> = LazyLock::new(|| {
    let mut writers = Vec::new();
    for kind in RecordKind::ALL {
        let texts = kind.history().iter().copied().chain([kind.avsc()]);
        for (i, text) in texts.enumerate() {
            let schema = Schema::parse_str(text).unwrap_or_else(|e| {
                panic!(
                    "embedded {} v{} does not parse: {e}",
                    kind.full_name(),
                    i + 1
                )
            });
            let fingerprint = schema
                .fingerprint::<Rabin>()
                .bytes
                .try_into()
                .expect("Rabin fingerprints are 8 bytes");
            let layout = crate::binary::kind(&schema, &mut Vec::new());
            writers.push(Writer {
                kind,
                version: i as u32 + 1,
                fingerprint,
                schema,
                layout,
            });
        }
    }
    writers
});

/// The known writer schema with this fingerprint.
pub(crate) fn writer(fingerprint: [u8; 8]) -> Option<&'static Writer> {
    WRITERS.iter().find(|w| w.fingerprint == fingerprint)
}

/// A copy of `schema` without named-type references (see [`Compiled::inlined`]).
pub(crate) fn inlined(schema: &Schema) -> Schema {
    let mut copy = schema.clone();
    inline_refs(&mut copy, &mut HashMap::new());
    copy
}

/// Replaces each `Schema::Ref` by the named type it refers to, defined earlier in document order.
fn inline_refs(schema: &mut Schema, defined: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Ref { name } => {
            // An unresolvable reference is left alone; writing then fails with a datum error.
            if let Some(definition) = defined.get(name) {
                *schema = definition.clone();
            }
        }
        Schema::Record(record) => {
            // Register first so that recursive records would still resolve (not used by flowlens).
            defined.insert(record.name.clone(), Schema::Record(record.clone()));
            for field in &mut record.fields {
                inline_refs(&mut field.schema, defined);
            }
        }
        Schema::Enum(e) => {
            defined.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            defined.insert(f.name.clone(), schema.clone());
        }
        Schema::Array(array) => inline_refs(&mut array.items, defined),
        Schema::Map(map) => inline_refs(&mut map.types, defined),
        Schema::Union(union) => {
            let mut variants = union.variants().to_vec();
            for v in &mut variants {
                inline_refs(v, defined);
            }
            *union = UnionSchema::new(variants).expect("inlining keeps a union valid");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_parse_and_fingerprints_differ() {
        let fps: Vec<_> = RecordKind::ALL.iter().map(|k| k.fingerprint()).collect();
        assert_ne!(fps[0], fps[1]);
        assert_ne!(fps[0], fps[2]);
        assert_ne!(fps[1], fps[2]);
        for k in RecordKind::ALL {
            assert_eq!(RecordKind::from_fingerprint(k.fingerprint()), Some(k));
            assert_eq!(k.schema().name().unwrap().fullname(None), k.full_name());
        }
    }

    #[test]
    fn avsc_files_exist_for_every_known_writer() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/");
        for (kind, version, _, _) in RecordKind::known_writers() {
            let file = kind.avsc_file(version);
            let text = std::fs::read_to_string(format!("{dir}{file}")).unwrap();
            let expected = match kind.history().get(version as usize - 1) {
                Some(old) => *old,
                None => kind.avsc(),
            };
            assert_eq!(text, expected, "{file}");
        }
        assert_eq!(
            RecordKind::EnrichedFlow.avsc_file(1),
            "avro/history/enriched_flow.v1.avsc"
        );
    }

    #[test]
    fn inlined_schema_has_no_refs() {
        fn has_ref(s: &Schema) -> bool {
            match s {
                Schema::Ref { .. } => true,
                Schema::Record(r) => r.fields.iter().any(|f| has_ref(&f.schema)),
                Schema::Union(u) => u.variants().iter().any(has_ref),
                _ => false,
            }
        }
        for k in RecordKind::ALL {
            let c = k.compiled();
            assert!(has_ref(&c.schema) || k == RecordKind::Interface, "{k:?}");
            assert!(!has_ref(&c.inlined), "{k:?}");
        }
    }
}
