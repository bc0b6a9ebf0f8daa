//! Any flowlens record as JSON, driven by its schema: records as objects, `IPv6Address` as IP text.
//!
//! The mapping, for tools and consumers that print or forward records without naming fields:
//! a record is an object of its fields, a union is its branch's value (`null` or the value), an
//! enum its symbol, a fixed `IPv6Address` the address as text (IPv4-mapped addresses as dotted
//! quads, like [`crate::v6_to_ip`]), any other fixed or bytes lowercase hex, numbers, strings and
//! booleans as themselves. `consumers/python/flowlens_consume.py` applies the same mapping.

use std::net::Ipv6Addr;

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use serde_json::{Map, Value as Json};

use crate::error::hex;
use crate::ip::v6_to_ip;
use crate::schema::RecordKind;

/// The Avro name of the fixed type carrying addresses.
const ADDRESS_TYPE: &str = "IPv6Address";

/// `value` (a record of `kind` in its current schema, as [`crate::decode_value`] returns it) as
/// JSON; see the module doc for the mapping.
pub fn to_json(kind: RecordKind, value: &Value) -> Json {
    convert(&kind.compiled().inlined, value)
}

fn convert(schema: &Schema, value: &Value) -> Json {
    match (schema, value) {
        (Schema::Record(record), Value::Record(fields)) => {
            let mut out = Map::new();
            for (name, field_value) in fields {
                let field_schema = record
                    .lookup
                    .get(name)
                    .map(|i| &record.fields[*i].schema)
                    .unwrap_or(&Schema::Null);
                out.insert(name.clone(), convert(field_schema, field_value));
            }
            Json::Object(out)
        }
        (Schema::Union(union), Value::Union(index, inner)) => {
            match union.variants().get(*index as usize) {
                Some(variant) => convert(variant, inner),
                None => convert(&Schema::Null, inner),
            }
        }
        (Schema::Fixed(fixed), Value::Fixed(16, bytes)) if fixed.name.name == ADDRESS_TYPE => {
            let octets: [u8; 16] = bytes.as_slice().try_into().expect("fixed of 16");
            Json::String(v6_to_ip(Ipv6Addr::from(octets)).to_string())
        }
        (_, Value::Fixed(_, bytes)) | (_, Value::Bytes(bytes)) => Json::String(hex(bytes)),
        (_, Value::Enum(_, symbol)) => Json::String(symbol.clone()),
        (_, Value::Union(_, inner)) => convert(&Schema::Null, inner),
        (Schema::Array(array), Value::Array(items)) => {
            Json::Array(items.iter().map(|v| convert(&array.items, v)).collect())
        }
        (Schema::Map(map), Value::Map(entries)) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), convert(&map.types, v)))
                .collect(),
        ),
        (_, Value::Record(fields)) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), convert(&Schema::Null, v)))
                .collect(),
        ),
        // Numbers, strings, booleans, null (and logical types flowlens does not use).
        (_, other) => Json::try_from(other.clone()).unwrap_or(Json::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_value, encode, ip_to_v6, EnrichedFlow, Process, RawFlow};

    #[test]
    fn every_field_by_name_addresses_as_text() {
        let mut flow = EnrichedFlow::from_raw(RawFlow {
            src_addr: ip_to_v6("10.1.2.3".parse().unwrap()),
            dst_addr: "2001:db8::7".parse().unwrap(),
            dst_port: 443,
            src_process: Some(Process {
                pid: 7,
                comm: "curl".into(),
                cgroup_id: 9,
            }),
            outer_src_addr: Some(ip_to_v6("192.0.2.1".parse().unwrap())),
            ..Default::default()
        });
        flow.src_namespace = Some("shop".into());
        let mut msg = Vec::new();
        encode(&flow, &mut msg).unwrap();
        let (kind, value) = decode_value(&msg).unwrap();
        assert_eq!(kind, RecordKind::EnrichedFlow);
        let json = to_json(kind, &value);
        assert_eq!(json["src_addr"], "10.1.2.3");
        assert_eq!(json["dst_addr"], "2001:db8::7");
        assert_eq!(json["outer_src_addr"], "192.0.2.1");
        assert_eq!(json["outer_dst_addr"], Json::Null);
        assert_eq!(json["dst_port"], 443);
        assert_eq!(json["direction"], "INGRESS");
        assert_eq!(json["src_namespace"], "shop");
        assert_eq!(json["dst_namespace"], Json::Null);
        assert_eq!(json["src_process"]["comm"], "curl");
        assert_eq!(json["dst_process"], Json::Null);
        // One key per field of the current schema, none invented.
        let Schema::Record(record) = kind.schema() else {
            panic!("a record")
        };
        assert_eq!(json.as_object().unwrap().len(), record.fields.len());
    }
}
