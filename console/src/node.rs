//! What a conversation's end is called in the console, as SQL over either end (`src` / `dst`) of
//! the raw table or a topology rollup: its node id, kind and namespace for a grouping
//! (workload, pod, namespace, node), and the group-or-IP name of an end with no pod.

use crate::clickhouse::Params;
use crate::config::Group;
use crate::error::ApiError;

/// How ends are gathered into topology nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Workload,
    Pod,
    Namespace,
    Node,
}

impl Grouping {
    pub fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        Ok(match text.unwrap_or("workload") {
            "workload" => Grouping::Workload,
            "pod" => Grouping::Pod,
            "namespace" => Grouping::Namespace,
            "node" => Grouping::Node,
            other => {
                return Err(ApiError::bad(format!(
                    "`group={other}`: expected workload, pod, namespace or node"
                )))
            }
        })
    }
}

/// The configured groups, bound once into a query's parameters.
pub struct NodeSql {
    groups: Vec<(String, String, String)>,
}

impl NodeSql {
    pub fn new(groups: &[Group], p: &mut Params) -> Self {
        Self {
            groups: groups
                .iter()
                .map(|g| {
                    (
                        p.bind("IPv6", g.net.first().to_string()),
                        p.bind("IPv6", g.net.last().to_string()),
                        p.bind("String", g.name.as_str()),
                    )
                })
                .collect(),
        }
    }

    /// Whether `end`'s address lies in a configured group.
    fn in_group(&self, end: &str) -> String {
        if self.groups.is_empty() {
            return "false".into();
        }
        let any: Vec<String> = self
            .groups
            .iter()
            .map(|(lo, hi, _)| format!("{end}_addr BETWEEN {lo} AND {hi}"))
            .collect();
        format!("({})", any.join(" OR "))
    }

    /// The first group `end`'s address lies in, else the address (IPv4 dotted).
    pub fn group_or_ip(&self, end: &str) -> String {
        let ip =
            format!("replaceRegexpOne(IPv6NumToString({end}_addr), '^::ffff:([0-9.]+)$', '\\\\1')");
        if self.groups.is_empty() {
            return ip;
        }
        let cases: Vec<String> = self
            .groups
            .iter()
            .map(|(lo, hi, name)| format!("{end}_addr BETWEEN {lo} AND {hi}, {name}"))
            .collect();
        format!("multiIf({}, {ip})", cases.join(", "))
    }

    /// `ns/pod` for an end with a pod, else its group or IP (the explorer's `*_group`).
    pub fn pod_or_group(&self, end: &str) -> String {
        format!(
            "if({end}_pod != '', concat({end}_namespace, '/', {end}_pod), {})",
            self.group_or_ip(end)
        )
    }

    /// `Group` or `External` for an end with no Kubernetes name.
    fn outside_kind(&self, end: &str) -> String {
        format!("if({}, 'Group', 'External')", self.in_group(end))
    }

    /// The node id of `end` under `grouping`.
    pub fn id(&self, end: &str, grouping: Grouping) -> String {
        let other = self.group_or_ip(end);
        match grouping {
            Grouping::Workload => format!(
                "multiIf({end}_workload != '', concat({end}_namespace, '/', {end}_workload), \
                 {end}_pod != '', concat({end}_namespace, '/', {end}_pod), {other})"
            ),
            Grouping::Pod => self.pod_or_group(end),
            Grouping::Namespace => {
                format!("if({end}_namespace != '', toString({end}_namespace), {other})")
            }
            Grouping::Node => format!("if({end}_node != '', toString({end}_node), {other})"),
        }
    }

    /// The node kind of `end` under `grouping` (Deployment, Pod, Namespace, Node, Group,
    /// External).
    pub fn kind(&self, end: &str, grouping: Grouping) -> String {
        let outside = self.outside_kind(end);
        match grouping {
            Grouping::Workload => format!(
                "multiIf({end}_workload != '', \
                 if({end}_workload_kind != '', toString({end}_workload_kind), 'Workload'), \
                 {end}_pod != '', 'Pod', {outside})"
            ),
            Grouping::Pod => format!("if({end}_pod != '', 'Pod', {outside})"),
            Grouping::Namespace => format!("if({end}_namespace != '', 'Namespace', {outside})"),
            Grouping::Node => format!("if({end}_node != '', 'Node', {outside})"),
        }
    }

    /// The Kubernetes namespace of `end`'s node ('' for groups, external addresses and nodes).
    pub fn namespace(&self, end: &str, grouping: Grouping) -> String {
        match grouping {
            Grouping::Workload => format!(
                "if({end}_workload != '' OR {end}_pod != '', toString({end}_namespace), '')"
            ),
            Grouping::Pod => format!("if({end}_pod != '', toString({end}_namespace), '')"),
            Grouping::Namespace => format!("toString({end}_namespace)"),
            Grouping::Node => "''".into(),
        }
    }
}
