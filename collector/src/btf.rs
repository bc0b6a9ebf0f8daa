//! A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux) for what the socket programs
//! need at run time instead of CO-RE (which aya-ebpf lacks): byte offsets of struct members
//! (through anonymous unions and structs), enum values (`enum skb_drop_reason`), and the
//! argument types of raw tracepoints (`btf_trace_<name>` typedefs). Format: Documentation/bpf/btf.rst.

use std::collections::HashMap;

use anyhow::{bail, Context};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One BTF type: its kind, name, `size_or_type` word and kind-specific entries.
#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: String,
    /// Size for INT/STRUCT/UNION/ENUM/FLOAT, referenced type for PTR/TYPEDEF/modifiers/FUNC.
    size_or_type: u32,
    /// Members (name, type, bit offset, bitfield size), enum values (name, value, 0, 0), function
    /// prototype parameters (name, type, 0, 0); array element type in `.0 .1`.
    entries: Vec<(String, u32, u64, u32)>,
}

/// A member found in a struct: byte offset from the start of the outer struct and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

/// Parsed BTF types, indexed by name.
pub struct Btf {
    /// Index = type id (0 is void).
    types: Vec<Type>,
    by_name: HashMap<(u32, String), u32>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> anyhow::Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("reading {path} (kernel BTF, CONFIG_DEBUG_INFO_BTF=y is needed)")
        })?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        let u16_at = |o: usize| -> anyhow::Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2).context("truncated")?.try_into()?,
            ))
        };
        let u32_at = |o: usize| -> anyhow::Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("truncated")?.try_into()?,
            ))
        };
        if u16_at(0)? != BTF_MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = hdr_len + u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let strings = data
            .get(str_off..str_off + str_len)
            .context("string section out of bounds")?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut types = vec![Type {
            kind: 0,
            name: "void".into(),
            size_or_type: 0,
            entries: Vec::new(),
        }];
        let end = type_off + type_len;
        let mut o = type_off;
        while o < end {
            let name_off = u32_at(o)?;
            let info = u32_at(o + 4)?;
            let size_or_type = u32_at(o + 8)?;
            o += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut entries = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => o += 4,
                KIND_ARRAY => {
                    entries.push((String::new(), u32_at(o)?, u64::from(u32_at(o + 8)?), 0));
                    o += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let (m_name, m_type, m_off) = (u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?);
                        let (bit_off, bits) = if kind_flag {
                            (m_off & 0xff_ffff, m_off >> 24)
                        } else {
                            (m_off, 0)
                        };
                        entries.push((name(m_name), m_type, u64::from(bit_off), bits));
                        o += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        entries.push((name(u32_at(o)?), 0, u64::from(u32_at(o + 4)?), 0));
                        o += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let v = u64::from(u32_at(o + 4)?) | (u64::from(u32_at(o + 8)?) << 32);
                        entries.push((name(u32_at(o)?), 0, v, 0));
                        o += 12;
                    }
                }
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        entries.push((name(u32_at(o)?), u32_at(o + 4)?, 0, 0));
                        o += 8;
                    }
                }
                KIND_DATASEC => o += 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            }
            types.push(Type {
                kind,
                name: name(name_off),
                size_or_type,
                entries,
            });
        }
        let mut by_name = HashMap::new();
        for (id, t) in types.iter().enumerate().skip(1) {
            if !t.name.is_empty() {
                by_name.entry((t.kind, t.name.clone())).or_insert(id as u32);
            }
        }
        Ok(Self { types, by_name })
    }

    fn find(&self, kind: u32, name: &str) -> Option<&Type> {
        let id = *self.by_name.get(&(kind, name.to_string()))?;
        Some(&self.types[id as usize])
    }

    /// Follows typedefs and const/volatile/restrict/type tags to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.types.get(self.resolve(id) as usize)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(t.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (_, elem, n, _) = t.entries.first()?;
                Some(self.size_of(*elem)? * (*n as u32))
            }
            _ => None,
        }
    }

    /// Offset and size of `path` (members separated by dots, e.g. `__sk_common.skc_family`) in
    /// `struct name`, looking through anonymous unions and structs. Bitfields are refused.
    pub fn member(&self, name: &str, path: &str) -> Option<Member> {
        let mut id = self
            .by_name
            .get(&(KIND_STRUCT, name.to_string()))
            .copied()?;
        let mut offset = 0u64;
        let mut size = 0;
        for part in path.split('.') {
            let (bits, member_type) = self.find_member(id, part)?;
            offset += bits;
            id = self.resolve(member_type);
            size = self.size_of(member_type)?;
        }
        if !offset.is_multiple_of(8) {
            return None;
        }
        Some(Member {
            offset: (offset / 8) as u32,
            size,
        })
    }

    /// Bit offset and type of member `name` in struct/union `id`, searching anonymous members.
    fn find_member(&self, id: u32, name: &str) -> Option<(u64, u32)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for (m_name, m_type, bit_off, bits) in &t.entries {
            if m_name == name {
                return (*bits == 0).then_some((*bit_off, *m_type));
            }
        }
        for (m_name, m_type, bit_off, _) in &t.entries {
            if m_name.is_empty() {
                if let Some((inner, ty)) = self.find_member(*m_type, name) {
                    return Some((bit_off + inner, ty));
                }
            }
        }
        None
    }

    /// The values of `enum name` (32- or 64-bit enums).
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, u64)>> {
        let t = self
            .find(KIND_ENUM, name)
            .or_else(|| self.find(KIND_ENUM64, name))?;
        Some(
            t.entries
                .iter()
                .map(|(n, _, v, _)| (n.clone(), *v))
                .collect(),
        )
    }

    /// The argument types of raw tracepoint `name` (its `TP_PROTO`, without the leading
    /// `void *__data`), described as `*sk_buff`, `*sock`, `*void`, `enum skb_drop_reason`, `int`,
    /// ...; `None` when the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<String>> {
        let typedef = self.find(KIND_TYPEDEF, &format!("btf_trace_{name}"))?;
        let ptr = self
            .types
            .get(self.resolve(typedef.size_or_type) as usize)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.types.get(self.resolve(ptr.size_or_type) as usize)?;
        if proto.kind != KIND_FUNC_PROTO || proto.entries.is_empty() {
            return None;
        }
        Some(
            proto.entries[1..]
                .iter()
                .map(|(_, ty, _, _)| self.describe(*ty))
                .collect(),
        )
    }

    fn describe(&self, id: u32) -> String {
        let t = &self.types[self.resolve(id) as usize];
        match t.kind {
            0 => "void".into(),
            KIND_PTR => format!("*{}", self.describe(t.size_or_type)),
            KIND_ENUM | KIND_ENUM64 => format!("enum {}", t.name),
            _ => t.name.clone(),
        }
    }

    /// Whether the kernel has a function `name` (a FUNC record: something kprobes can attach to
    /// unless it was inlined everywhere).
    pub fn has_function(&self, name: &str) -> bool {
        self.find(KIND_FUNC, name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF: the offsets the socket programs rely on exist and agree with
    /// what the tracepoint formats show (when tracefs is readable). A kernel without BTF fails
    /// the test: the collector needs it (README: kernel with BTF).
    #[test]
    fn reads_the_running_kernel() {
        let btf = Btf::from_kernel()
            .unwrap_or_else(|e| panic!("{e:#}: the socket programs need the running kernel's BTF"));
        let family = btf.member("sock", "__sk_common.skc_family").unwrap();
        assert_eq!(family.size, 2);
        let num = btf.member("sock_common", "skc_num").unwrap();
        assert_eq!(num.size, 2);
        let daddr = btf.member("sock_common", "skc_daddr").unwrap();
        assert_eq!(daddr.size, 4);
        assert_eq!(btf.member("sk_buff", "network_header").unwrap().size, 2);
        assert_eq!(btf.member("sk_buff", "head").unwrap().size, 8);
        assert_eq!(btf.member("tcp_sock", "srtt_us").unwrap().size, 4);
        assert_eq!(btf.member("sock_common", "skc_reuse"), None, "bitfield");
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(reasons.contains(&("SKB_CONSUMED".to_string(), 1)));
        assert!(reasons
            .iter()
            .any(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP"));
        let args = btf.tracepoint_args("kfree_skb").unwrap();
        assert_eq!(args[0], "*sk_buff");
        assert_eq!(args[2], "enum skb_drop_reason");
        assert_eq!(btf.tracepoint_args("tcp_probe").unwrap()[0], "*sock");
        assert!(btf.tracepoint_args("no_such_tracepoint").is_none());
    }
}
