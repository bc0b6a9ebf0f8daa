//! flowlens data contract: the Avro schemas in `avro/*.avsc`, their Rust records, and single-object encoding.
//!
//! ```
//! use flowlens_schemas::{decode, encode, ip_to_v6, Direction, RawFlow};
//! # let flow = RawFlow { host: "node-1".into(), ifindex: 2, direction: Direction::Ingress,
//! #     time_flow_start_ns: 1, time_flow_end_ns: 2, time_exported_ns: 3, etype: 0x0800, vlan_id: 0,
//! #     proto: 6, src_addr: ip_to_v6("10.0.0.1".parse().unwrap()),
//! #     dst_addr: ip_to_v6("10.0.0.2".parse().unwrap()), src_port: 1234, dst_port: 80,
//! #     icmp_type: 0, icmp_code: 0, tcp_flags: 0x12, packets: 1, bytes: 74, sampling_rate: 1,
//! #     ..Default::default() };
//! let mut buf = Vec::new();
//! encode(&flow, &mut buf)?;
//! assert_eq!(&buf[..2], &[0xC3, 0x01]);
//! let back: RawFlow = decode(&buf)?;
//! assert_eq!(back, flow);
//! # Ok::<(), flowlens_schemas::SchemaError>(())
//! ```

pub mod binary;
mod codec;
mod error;
mod ip;
pub mod json;
mod protocol;
pub mod reader;
mod records;
mod schema;
pub mod writer;

pub use codec::{
    decode, decode_any, decode_value, decode_with_reader, encode, peek_fingerprint, peek_kind,
    AnyRecord, HEADER_LEN, MAGIC,
};
pub use error::SchemaError;
pub use ip::{ip_to_v6, v6_to_ip, Net};
pub use protocol::{protocol_name, protocol_number};
pub use records::{Direction, Dns, EnrichedFlow, Http, Interface, Origin, Process, RawFlow};
pub use schema::{
    AvroRecord, RecordKind, ENRICHED_FLOW_AVSC, ENRICHED_FLOW_V1_AVSC, ENRICHED_FLOW_V2_AVSC,
    ENRICHED_FLOW_V3_AVSC, ENRICHED_FLOW_V4_AVSC, INTERFACE_AVSC, RAW_FLOW_AVSC, RAW_FLOW_V1_AVSC,
    RAW_FLOW_V2_AVSC, RAW_FLOW_V3_AVSC,
};

/// Re-export of the apache-avro version the contract is built with.
pub use apache_avro;
