//! TLS to ClickHouse for https:// URLs: rustls (ring) trusting the system's CA certificates or
//! only those of `clickhouse.tls_ca_file`, presenting `tls_cert_file` + `tls_key_file` when set;
//! the server's certificate and name are always verified.

use std::sync::Arc;
use std::time::Duration;

use flowlens_runtime::ConfigError;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ClickHouseConfig;

/// Keep-alive probes on idle connections, as the clickhouse crate's own client does.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Below ClickHouse's keep-alive timeout (3 s before 23.11), as the crate's own client.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The rustls client configuration for `config`, `None` for an http:// URL. Errors name the key
/// and the file.
pub fn client_config(
    config: &ClickHouseConfig,
) -> Result<Option<rustls::ClientConfig>, ConfigError> {
    if !config.url.starts_with("https://") {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    if config.tls_ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ConfigError::invalid(
                "clickhouse.tls_ca_file",
                format!(
                    "is empty and no system CA certificate was found for {} (install \
                     ca-certificates or name a CA file)",
                    config.url
                ),
            ));
        }
    } else {
        let key = "clickhouse.tls_ca_file";
        for cert in certificates(key, &config.tls_ca_file)? {
            roots
                .add(cert)
                .map_err(|e| ConfigError::invalid(key, format!("`{}`: {e}", config.tls_ca_file)))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::invalid("clickhouse.url", format!("TLS: {e}")))?
    .with_root_certificates(roots);
    if config.tls_cert_file.is_empty() {
        return Ok(Some(builder.with_no_client_auth()));
    }
    let chain = certificates("clickhouse.tls_cert_file", &config.tls_cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.tls_key_file).map_err(|e| {
        ConfigError::invalid(
            "clickhouse.tls_key_file",
            format!("`{}` holds no PEM private key: {e}", config.tls_key_file),
        )
    })?;
    builder
        .with_client_auth_cert(chain, key)
        .map(Some)
        .map_err(|e| {
            ConfigError::invalid(
                "clickhouse.tls_key_file",
                format!(
                    "`{}` does not go with `{}`: {e}",
                    config.tls_key_file, config.tls_cert_file
                ),
            )
        })
}

/// Every certificate of the PEM file `path` (named by `key`); at least one.
fn certificates(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::invalid(key, format!("`{path}`: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("`{path}` holds no PEM certificate"),
        ));
    }
    Ok(certs)
}

/// The connector of an https:// client: plain TCP as the crate's own client, then TLS.
pub fn connector(tls: rustls::ClientConfig) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut tcp = HttpConnector::new();
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp)
}
