//! The enricher's happy path against tansu, a real Kafka-protocol broker (memory storage),
//! started on a free port for this test. Needs the binary installed by scripts/setup.sh; set
//! FLOWLENS_SKIP_TANSU=1 to skip where it cannot be installed.

mod common;

use common::*;
use flowlens_testkit::{require, Tansu, TANSU};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriches_dead_letters_and_commits_everything_on_tansu() {
    if require(TANSU, "TANSU") {
        return;
    }
    let tansu = Tansu::start();
    let config = config(&tansu.broker(), true);
    let t = &config.kafka.topics;
    // Created here (the enricher would too) because the inputs are published before it starts.
    config
        .kafka
        .ensure_topics(&[
            (t.raw_flows.as_str(), false),
            (t.interfaces.as_str(), true),
            (t.enriched_flows.as_str(), false),
            (t.dead_letter.as_str(), false),
        ])
        .await
        .expect("creating topics on tansu");
    happy_path(config).await;
}
