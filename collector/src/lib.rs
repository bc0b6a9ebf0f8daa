//! flowlens collector: loads the kernel flow accounting programs (collector-ebpf/), drains the
//! kernel flow table every scan interval and publishes Avro flow and interface records to Kafka.

pub mod agent;
pub mod config;
pub mod conversation;
pub mod drain;
pub mod encode;
pub mod filter;
pub mod interfaces;
pub mod kernel_offsets;
pub mod netns;
pub mod privileges;
pub mod probe;
pub mod publish;
pub mod record;
pub mod sockets;
pub mod table;

pub use agent::run;
pub use config::Config;
