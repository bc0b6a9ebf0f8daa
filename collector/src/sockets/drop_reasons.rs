//! Names of the kernel's drop reasons (`enum skb_drop_reason`, read from BTF).

use std::collections::HashMap;

/// Names of `enum skb_drop_reason` values, without the `SKB_DROP_REASON_` prefix.
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    subsystems: HashMap<u32, String>,
}

impl DropReasons {
    pub(super) fn new(values: &[(String, u64)], subsystems: Option<Vec<(String, u64)>>) -> Self {
        let short = |n: &str, prefix: &str| n.strip_prefix(prefix).unwrap_or(n).to_string();
        Self {
            names: values
                .iter()
                .map(|(n, v)| {
                    let n = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(n);
                    (*v as u32, short(n, "SKB_"))
                })
                .collect(),
            subsystems: subsystems
                .unwrap_or_default()
                .iter()
                .map(|(n, v)| (*v as u32, short(n, "SKB_DROP_REASON_SUBSYS_")))
                .collect(),
        }
    }

    /// The name of reason `value`: `NETFILTER_DROP`, or `<SUBSYSTEM>_<code>` for reasons of a
    /// subsystem (high 16 bits, e.g. mac80211), or `UNKNOWN_<value>`.
    pub fn name(&self, value: u32) -> String {
        if let Some(n) = self.names.get(&value) {
            return n.clone();
        }
        let subsystem = value >> 16;
        match self.subsystems.get(&subsystem) {
            Some(s) if subsystem != 0 => format!("{s}_{}", value & 0xffff),
            _ => format!("UNKNOWN_{value}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_names() {
        let r = DropReasons::new(
            &[
                ("SKB_NOT_DROPPED_YET".into(), 0),
                ("SKB_CONSUMED".into(), 1),
                ("SKB_DROP_REASON_NETFILTER_DROP".into(), 12),
            ],
            Some(vec![("SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE".into(), 1)]),
        );
        assert_eq!(r.name(12), "NETFILTER_DROP");
        assert_eq!(r.name(1), "CONSUMED");
        assert_eq!(r.name(0x1_0003), "MAC80211_UNUSABLE_3");
        assert_eq!(r.name(999), "UNKNOWN_999");
    }
}
