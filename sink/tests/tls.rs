//! TLS and SASL through the real `flowlens-sink` binary, against real TLS endpoints: stunnel
//! (OpenSSL) terminating TLS in front of the chdb ClickHouse front and in front of tansu (which
//! advertises the TLS port to its clients), certificates made by the `openssl` command line
//! (`testkit::Pki`). The oracles are ClickHouse (rows by unique id), the TLS endpoints (which
//! refuse a client without a certificate) and the broker (which refuses an unknown SCRAM user).

mod common;

use std::time::Duration;

use common::{produce, run, spawn, text, wait_exactly_once};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_testkit::{
    free_port, require, unique, Chdb, Pki, Stunnel, Tansu, STUNNEL, TANSU, VENV_PYTHON,
};

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB") || require(STUNNEL, "STUNNEL")
}

/// `migrate` over https:// through a relay that requires a client certificate: accepted with
/// the CA file and the client certificate; refused, with an error naming the URL and the CA
/// file, with a CA that did not sign the server's certificate, with the system's CAs, and
/// without a client certificate.
#[test]
fn clickhouse_over_tls_with_client_certificate() {
    if skip() {
        return;
    }
    let pki = Pki::new();
    let chdb = Chdb::start();
    let relay = Stunnel::start(&pki, chdb.port, true);
    let url = format!("https://127.0.0.1:{}", relay.port);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    let write = |tls: &str| {
        std::fs::write(
            &config,
            format!("[clickhouse]\nurl = \"{url}\"\ndatabase = \"over_tls\"\n{tls}"),
        )
        .unwrap()
    };
    let client_cert = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        pki.file("client"),
        pki.file("client.key")
    );

    write(&format!(
        "tls_ca_file = \"{}\"\n{client_cert}",
        pki.file("ca")
    ));
    let out = run(&config, &["migrate"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The migrations went through the relay: ClickHouse (asked directly) has the tables.
    let tables: u64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        clickhouse::Client::default()
            .with_url(chdb.url())
            .query("SELECT count() FROM system.tables WHERE database = 'over_tls'")
            .fetch_one()
            .await
            .unwrap()
    });
    assert!(tables >= 8, "{tables} tables");

    write(&format!(
        "tls_ca_file = \"{}\"\n{client_cert}",
        pki.file("other_ca")
    ));
    let out = run(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for needle in [url.as_str(), pki.file("other_ca").as_str(), "UnknownIssuer"] {
        assert!(text(&out).contains(needle), "{needle}: {}", text(&out));
    }

    write(&client_cert);
    let out = run(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the system's CA certificates") && text(&out).contains("UnknownIssuer"),
        "{}",
        text(&out)
    );

    write(&format!("tls_ca_file = \"{}\"\n", pki.file("ca")));
    let out = run(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&url), "{}", text(&out));

    // TLS files with an http:// URL, or half a client certificate: configuration errors.
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\ntls_ca_file = \"{}\"\n",
            chdb.url(),
            pki.file("ca")
        ),
    )
    .unwrap();
    let out = run(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("clickhouse.tls_ca_file"),
        "{}",
        text(&out)
    );
    write(&format!("tls_cert_file = \"{}\"\n", pki.file("client")));
    let out = run(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("clickhouse.tls_key_file"),
        "{}",
        text(&out)
    );
}

/// The `[kafka]` part of a sink configuration for a TLS relay on `port`.
fn kafka_tls(port: u16, pki: &Pki, ca: &str, topic: &str) -> String {
    format!(
        "[kafka]\nbrokers = [\"127.0.0.1:{port}\"]\npartitions = 2\nsecurity_protocol = \"ssl\"\n\
         tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
         [kafka.topics]\nenriched_flows = \"{topic}\"\ndead_letter = \"{topic}.dlq\"\n",
        pki.file(ca),
        pki.file("client"),
        pki.file("client.key"),
    )
}

/// The whole sink over TLS: records read from tansu behind a relay that requires a client
/// certificate (the broker advertises the relay's port), written to ClickHouse over https,
/// every record once (by unique id). Then a CA that did not sign the broker's certificate: the
/// binary stops at start, naming the CA file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_reads_kafka_over_tls_and_writes_clickhouse_over_tls() {
    if skip() {
        return;
    }
    let pki = Pki::new();
    let chdb = Chdb::start();
    let https = Stunnel::start(&pki, chdb.port, false);
    let kafka_port = free_port();
    let tansu = Tansu::start_advertising(kafka_port, &[]);
    let _relay = Stunnel::start_on(kafka_port, &pki, tansu.port, true);
    let topic = unique("tls");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"https://127.0.0.1:{}\"\ntls_ca_file = \"{}\"\n\
             [batch]\nmax_age_ms = 300\n[sink]\ngroup_id = \"{topic}-sink\"\n{}",
            https.port,
            pki.file("ca"),
            kafka_tls(kafka_port, &pki, "ca", &topic)
        ),
    )
    .unwrap();
    let kafka = KafkaConfig {
        brokers: vec![format!("127.0.0.1:{kafka_port}")],
        partitions: 2,
        security_protocol: "ssl".into(),
        tls_ca_file: pki.file("ca"),
        tls_cert_file: pki.file("client"),
        tls_key_file: pki.file("client.key"),
        ..Default::default()
    };
    kafka.ensure_topics(&[(&topic, false)]).await.unwrap();
    const N: u32 = 2_000;
    produce(&kafka, &topic, 2, 0, N).await;
    let log = dir.path().join("sink.log");
    let mut sink = spawn(&config, &[], &log);
    let ch = clickhouse::Client::default().with_url(chdb.url());
    wait_exactly_once(&ch, "flows", u64::from(N), Duration::from_secs(90)).await;
    assert!(sink.stop_with(libc::SIGTERM, Duration::from_secs(20)));

    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        format!(
            "[clickhouse]\nurl = \"{}\"\n{}",
            chdb.url(),
            kafka_tls(kafka_port, &pki, "other_ca", &topic)
        ),
    )
    .unwrap();
    let out = run(&wrong, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for needle in [
        format!(
            "Kafka at 127.0.0.1:{kafka_port}: TLS with CA file `{}`",
            pki.file("other_ca")
        ),
        "certificate verify failed".to_string(),
    ] {
        assert!(text(&out).contains(&needle), "{needle}: {}", text(&out));
    }
}

/// SASL SCRAM over TLS against tansu's SCRAM implementation (`--authentication`). tansu 0.6
/// keeps users in its storage, memory here, and creating one needs an authenticated client,
/// so no user can exist: what is tested is that the binary performs the SCRAM exchange with
/// the configured user, mechanism and password (from the environment, or from
/// `kafka.sasl_password_file`), that the broker's refusal stops it at start with a message
/// naming the user and the mechanism, and that the password is printed nowhere.
#[test]
fn sasl_scram_refusal_names_the_user() {
    if skip() {
        return;
    }
    const SECRET: &str = "scram-Pa55-plugh";
    let pki = Pki::new();
    let kafka_port = free_port();
    let tansu = Tansu::start_advertising(kafka_port, &["--authentication"]);
    let _relay = Stunnel::start_on(kafka_port, &pki, tansu.port, false);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("sasl-password");
    std::fs::write(&password_file, format!("{SECRET}\n")).unwrap();
    let write = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = [\"127.0.0.1:{kafka_port}\"]\nsecurity_protocol = \"sasl_ssl\"\n\
                 tls_ca_file = \"{}\"\nsasl_mechanism = \"SCRAM-SHA-256\"\n\
                 sasl_username = \"flowlens\"\n{extra}",
                pki.file("ca")
            ),
        )
        .unwrap();
        path
    };
    let from_env = write("env.toml", "");
    let from_file = write(
        "file.toml",
        &format!("sasl_password_file = \"{}\"\n", password_file.display()),
    );
    for (config, env) in [
        (
            &from_env,
            vec![("FLOWLENS_SINK__KAFKA__SASL_PASSWORD", SECRET)],
        ),
        (&from_file, vec![]),
    ] {
        let out = run(config, &[], &env);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let shown = text(&out);
        assert!(
            shown.contains("SASL authentication as `flowlens` (SCRAM-SHA-256) failed")
                && shown.contains("unknown-user"),
            "{shown}"
        );
        assert!(!shown.contains(SECRET), "password printed:\n{shown}");
    }
    // Without a password: a configuration error naming the key, before any connection.
    let out = run(&from_env, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("kafka.sasl_password"), "{}", text(&out));
}
