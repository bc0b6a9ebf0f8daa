//! flowlens collector: loads the kernel flow accounting programs (collector-ebpf/), drains the
//! kernel flow table every scan interval and publishes Avro flow and interface records to Kafka.

pub mod agent;
pub mod bpf_map;
pub mod btf;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod encode;
pub mod filter;
pub mod interfaces;
pub mod l7;
pub mod netns;
pub mod pins;
pub mod privileges;
pub mod programs;
pub mod publish;
pub mod raw_flow;
pub mod sockets;
pub mod table;

pub use agent::run;
pub use config::Config;
