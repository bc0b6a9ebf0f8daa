//! Per-conversation socket metrics from the kernel's socket programs (collector-ebpf/src/
//! sockets.rs): the smoothed RTT and retransmitted segments of local TCP sockets, packets the
//! kernel dropped with its reason, and the process (pid, comm, cgroup v2 id) owning each local
//! TCP/UDP socket.
//!
//! - [`SocketPlan::discover`] (plan.rs) reads the kernel's BTF at start: the struct offsets the
//!   programs need (no CO-RE in aya-ebpf), the raw tracepoints' argument types, `enum
//!   skb_drop_reason` (drop_reasons.rs). What the kernel lacks disables that feature with a
//!   warning naming it (`flowlens_collector_socket_probe_disabled{probe}` = 1); the flow programs
//!   are unaffected.
//! - [`SocketProbes::start`] (attach.rs) loads and attaches the programs (raw tracepoints: CAP_BPF
//!   and CAP_PERFMON, no tracefs access needed; kprobes as the owner fallback on kernels before
//!   6.4).
//! - [`SocketStats`] (stats.rs) reads the LRU maps every scan and turns the kernel's cumulative
//!   counters into what each conversation added since the previous scan (like `crate::table` for
//!   flows); entries idle longer than the idle timeout are taken out of the kernel maps with their
//!   last counts. [`ConnExtras`] (extras.rs) is what one conversation gets.
//!
//! The maps are host-wide: a conversation is identified by protocol, addresses and ports (IPv4 as
//! `::ffff:a.b.c.d`), whatever network namespace its sockets live in.

mod attach;
mod drop_reasons;
mod extras;
mod plan;
mod stats;

pub use attach::SocketProbes;
pub use drop_reasons::DropReasons;
pub use extras::{ConnExtras, Endpoint, ProcessInfo};
pub use plan::{Feature, SocketOptions, SocketPlan};
pub use stats::{SocketScan, SocketStats};
