//! A batch of RowBinary rows (`FlowRow` column order) rewritten as one Native block: the same
//! values, column by column. Fixed-width values and length-prefixed strings are encoded alike in
//! both formats, so the rewrite only moves bytes; an array of fixed-width values (RowBinary: its
//! length, then the values) becomes Native's offsets (the running total of the lengths, one
//! UInt64 per row) followed by every row's values. ClickHouse parses Native for less CPU per
//! row (bench/results/insert-formats.md).

use anyhow::{bail, Context};

use super::binary::{read_varint, write_varint};
use super::COLUMN_TYPES;

/// How one column's value is laid out in RowBinary and in Native.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// A fixed number of bytes (little-endian numbers, FixedString, IPv6).
    Fixed(usize),
    /// LEB128 length, then the bytes.
    String,
    /// `Array` of values of this fixed size: in RowBinary a LEB128 count, then the values.
    Array(usize),
}

impl Wire {
    /// The layout of a value of ClickHouse type `t`; `None` for a type this writer does not
    /// know (the batch then goes as RowBinary).
    fn of(t: &str) -> Option<Self> {
        if let Some(items) = t.strip_prefix("Array(").and_then(|t| t.strip_suffix(')')) {
            return match Wire::of(items)? {
                Wire::Fixed(n) => Some(Wire::Array(n)),
                _ => None,
            };
        }
        let fixed = match t {
            "String" | "LowCardinality(String)" => return Some(Wire::String),
            "UInt8" | "Int8" | "Bool" => 1,
            "UInt16" | "Int16" => 2,
            "UInt32" | "Int32" => 4,
            "UInt64" | "Int64" => 8,
            "IPv6" => 16,
            _ if t.starts_with("Enum8(") => 1,
            _ if t.starts_with("DateTime64(") => 8,
            _ => {
                let n = t.strip_prefix("FixedString(")?.strip_suffix(')')?;
                n.parse().ok()?
            }
        };
        Some(Wire::Fixed(fixed))
    }
}

/// The table's columns as a Native block names them: name, type, layout.
#[derive(Debug, Clone)]
pub struct NativeLayout {
    columns: Vec<(&'static str, String, Wire)>,
}

impl NativeLayout {
    /// The layout for a table whose columns have the types `types` (name, type, as
    /// `system.columns` gives them); `None` when a column the rows hold is missing or of a type
    /// this writer does not know. A `LowCardinality(String)` column is sent as `String` (the
    /// server converts it; a LowCardinality column in Native has a dictionary encoding).
    pub fn for_table(types: &[(String, String)]) -> Option<Self> {
        let columns = COLUMN_TYPES
            .iter()
            .map(|(name, _)| {
                let (_, t) = types.iter().find(|(n, _)| n == name)?;
                let wire = Wire::of(t)?;
                let header = if wire == Wire::String {
                    "String".to_owned()
                } else {
                    t.clone()
                };
                Some((*name, header, wire))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { columns })
    }

    /// Appends `rows` RowBinary rows of `data` to `out` as one Native block. An error means
    /// `data` does not hold `rows` whole rows of this layout.
    pub fn write_block(&self, data: &[u8], rows: usize, out: &mut Vec<u8>) -> anyhow::Result<()> {
        // Per column: its values, and for an array the offsets and the running total.
        let mut columns: Vec<(Vec<u8>, Vec<u8>, u64)> = self
            .columns
            .iter()
            .map(|(_, _, wire)| match wire {
                Wire::Fixed(n) => (Vec::with_capacity(n * rows), Vec::new(), 0),
                Wire::String => (Vec::with_capacity(8 * rows), Vec::new(), 0),
                Wire::Array(_) => (Vec::new(), Vec::with_capacity(8 * rows), 0),
            })
            .collect();
        let mut at = 0;
        for row in 0..rows {
            for ((column, offsets, total), (_, _, wire)) in columns.iter_mut().zip(&self.columns) {
                let (skip, len) = match wire {
                    Wire::Fixed(n) => (0, *n),
                    Wire::String => {
                        let (n, prefix) = read_varint(&data[at.min(data.len())..])
                            .with_context(|| format!("row {row}: a string's length"))?;
                        (0, prefix + n)
                    }
                    Wire::Array(size) => {
                        let (n, prefix) = read_varint(&data[at.min(data.len())..])
                            .with_context(|| format!("row {row}: an array's length"))?;
                        *total += n as u64;
                        offsets.extend_from_slice(&total.to_le_bytes());
                        let len = n.checked_mul(*size).context("an array's length")?;
                        (prefix, len)
                    }
                };
                at += skip;
                let Some(value) = data.get(at..at.saturating_add(len)) else {
                    bail!("row {row}: the data ends inside a value");
                };
                column.extend_from_slice(value);
                at += len;
            }
        }
        if at != data.len() {
            bail!("{} bytes after {rows} rows", data.len() - at);
        }
        out.reserve(data.len() + 32 * self.columns.len());
        write_varint(out, self.columns.len());
        write_varint(out, rows);
        for ((name, header, _), (column, offsets, _)) in self.columns.iter().zip(columns) {
            for s in [name.as_bytes(), header.as_bytes()] {
                write_varint(out, s.len());
                out.extend_from_slice(s);
            }
            out.extend_from_slice(&offsets);
            out.extend_from_slice(&column);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{sample_flow, FlowRow};

    /// The column types of the project's migrations, as `system.columns` names them.
    fn migration_types() -> Vec<(String, String)> {
        COLUMN_TYPES
            .iter()
            .map(|(n, t)| (n.to_string(), t[0].to_owned()))
            .collect()
    }

    #[test]
    fn a_block_holds_every_value_of_every_row_column_by_column() {
        let layout = NativeLayout::for_table(&migration_types()).expect("known types");
        let rows: Vec<FlowRow> = (0..3)
            .map(|i| {
                let mut flow = sample_flow(i as u32);
                flow.packets = 10 + i;
                flow.host = format!("host-{i}");
                FlowRow::try_from(flow).unwrap()
            })
            .collect();
        let mut data = Vec::new();
        for row in &rows {
            row.write_row_binary(&mut data);
        }
        let mut block = Vec::new();
        layout.write_block(&data, rows.len(), &mut block).unwrap();
        assert_eq!(&block[..2], &[COLUMN_TYPES.len() as u8, 3]);
        // dns_latencies_us and http_latencies_us (arrays): three offsets, then the values of
        // the three rows.
        type Latencies = fn(&FlowRow) -> &Vec<u32>;
        let arrays: [(&str, Latencies); 2] = [
            ("dns_latencies_us", |r| &r.dns_latencies_us),
            ("http_latencies_us", |r| &r.http_latencies_us),
        ];
        for (name, latencies) in arrays {
            let mut expected = Vec::new();
            for s in [name, "Array(UInt32)"] {
                write_varint(&mut expected, s.len());
                expected.extend_from_slice(s.as_bytes());
            }
            let mut total = 0u64;
            for row in &rows {
                total += latencies(row).len() as u64;
                expected.extend_from_slice(&total.to_le_bytes());
            }
            for row in &rows {
                for l in latencies(row) {
                    expected.extend_from_slice(&l.to_le_bytes());
                }
            }
            assert!(total > 0, "some row has {name}");
            assert!(
                block.windows(expected.len()).any(|w| w == expected),
                "{name}"
            );
        }
        // Column `host` (the fourth): header, then the three values in row order.
        let mut expected = Vec::new();
        for s in ["host", "String", "host-0", "host-1", "host-2"] {
            write_varint(&mut expected, s.len());
            expected.extend_from_slice(s.as_bytes());
        }
        let found = block.windows(expected.len()).any(|w| w == expected);
        assert!(found, "the host column, whole and in order");
        // The same bytes, plus the headers, with an 8-byte offset in place of each array
        // length varint.
        assert_eq!(
            block.len(),
            data.len()
                + 2
                + layout
                    .columns
                    .iter()
                    .map(|(n, t, _)| 2 + n.len() + t.len())
                    .sum::<usize>()
                + rows
                    .iter()
                    .flat_map(|r| [&r.dns_latencies_us, &r.http_latencies_us])
                    .map(|l| 8 - super::super::binary::varint_len(l.len()))
                    .sum::<usize>()
        );
        // Truncated data is an error, not a short block.
        assert!(layout
            .write_block(&data[..data.len() - 1], 3, &mut Vec::new())
            .is_err());
        assert!(layout.write_block(&data, 2, &mut Vec::new()).is_err());
    }

    #[test]
    fn unknown_or_missing_columns_mean_no_native_layout() {
        let mut types = migration_types();
        types[1].1 = "Nullable(Int64)".into();
        assert!(NativeLayout::for_table(&types).is_none());
        types.remove(1);
        assert!(NativeLayout::for_table(&types).is_none());
        assert_eq!(Wire::of("FixedString(16)"), Some(Wire::Fixed(16)));
        assert_eq!(Wire::of("Array(UInt32)"), Some(Wire::Array(4)));
        assert_eq!(
            Wire::of("Array(String)"),
            None,
            "only arrays of fixed-width values"
        );
        assert_eq!(
            Wire::of("DateTime64(9, 'UTC')"),
            Some(Wire::Fixed(8)),
            "any DateTime64 is an Int64"
        );
    }
}
