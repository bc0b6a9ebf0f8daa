//! Shared plumbing for the flowlens services: configuration, Kafka client settings, telemetry
//! (logs and Prometheus metrics), consumer lag and graceful shutdown. Each stage keeps only its own logic.

pub mod config;
pub mod consumer_lag;
pub mod dead_letter;
pub mod health;
pub mod incarnation;
pub mod kafka;
pub mod kafka_probe;
pub mod polled_producer;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::{load_config, ConfigError, Secret, Validate};
pub use dead_letter::{DeadLetter, DeadLetterConfig};
pub use polled_producer::PolledProducer;
pub use shutdown::Shutdown;
