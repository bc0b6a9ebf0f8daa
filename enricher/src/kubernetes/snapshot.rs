//! Snapshot source: the JSON `kubectl get pods,services,nodes,replicasets -A -o json` prints
//! (a `List`; `endpointslices` and `jobs` may be added), read from a file and re-read when it
//! changes. Each load replaces the whole view: an object missing from the new file is gone
//! (its addresses' history is closed at the reload time).

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowlens_runtime::Shutdown;
use tokio::sync::watch;

use super::model::{Kind, Object};

use super::store::{Change, SharedStore};
use super::{now_ns, publish_stats};
/// Re-exported for writing snapshots (tests, tools) with the same JSON library.
pub use serde_json;

/// Every kind a snapshot replaces (kinds absent from the file are replaced by nothing).
pub const KINDS: [Kind; 6] = [
    Kind::Owner("ReplicaSet"),
    Kind::Owner("Job"),
    Kind::Node,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
];

/// Objects of the kinds the enricher uses, from a `kubectl -o json` document: a `List` (or
/// `PodList`, ...), a single object, or a JSON array of either.
pub fn parse(text: &str) -> Result<Vec<Object>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Vec::new();
    collect(value, None, &mut out)?;
    Ok(out)
}

fn collect(
    value: serde_json::Value,
    item_kind: Option<&str>,
    out: &mut Vec<Object>,
) -> Result<(), String> {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                collect(item, item_kind, out)?;
            }
            Ok(())
        }
        serde_json::Value::Object(mut map) => {
            let kind = map
                .get("kind")
                .and_then(|k| k.as_str())
                .map(str::to_string)
                .or_else(|| item_kind.map(str::to_string))
                .unwrap_or_default();
            if let Some(items) = map.remove("items") {
                // "List" holds anything (each item has its kind); "PodList" holds pods.
                let inner = kind.strip_suffix("List").filter(|k| !k.is_empty());
                return collect(items, inner, out);
            }
            if let Some(object) = Object::from_json(&kind, serde_json::Value::Object(map))? {
                out.push(object);
            }
            Ok(())
        }
        _ => Err("expected a JSON object or array".into()),
    }
}

/// The changes that make the store hold exactly `objects`.
pub fn replace_all(objects: Vec<Object>) -> Vec<Change> {
    let mut per_kind: Vec<(Kind, Vec<Object>)> = KINDS.iter().map(|k| (*k, Vec::new())).collect();
    for o in objects {
        let kind = o.kind();
        if let Some((_, list)) = per_kind.iter_mut().find(|(k, _)| *k == kind) {
            list.push(o);
        }
    }
    per_kind
        .into_iter()
        .map(|(k, list)| Change::Replace(k, list))
        .collect()
}

/// Loads `path` now and whenever its modification time, size or content changes (checked
/// every `poll`). A file that does not parse is reported and the previous view kept.
pub async fn follow(
    path: PathBuf,
    poll: Duration,
    store: SharedStore,
    ready: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let mut last: Option<(Stamp, u64)> = None;
    let mut polls: u64 = 0;
    loop {
        // File times are coarse (a kernel tick): a rewrite within one tick, same size, keeps
        // the stamp. Every 10th poll the content is compared regardless.
        polls += 1;
        match load_if_changed(&path, &mut last, polls.is_multiple_of(10)) {
            Ok(Some(objects)) => {
                let count = objects.len();
                let changes = replace_all(objects);
                let stats = {
                    let mut s = store.write().unwrap_or_else(|p| p.into_inner());
                    s.apply_all(changes, now_ns());
                    s.mark_synced();
                    s.stats()
                };
                publish_stats(&stats);
                metrics::counter!("flowlens_enricher_kubernetes_snapshot_loads_total").increment(1);
                tracing::info!(path = %path.display(), objects = count, pods = stats.pods, services = stats.services, "kubernetes snapshot loaded");
                let _ = ready.send(true);
            }
            Ok(None) => {}
            Err(e) => {
                metrics::counter!("flowlens_enricher_kubernetes_snapshot_errors_total")
                    .increment(1);
                tracing::warn!(path = %path.display(), error = %e, "kubernetes snapshot not loaded; keeping the previous one");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// What identifies a version of the file without reading it: modification and change times,
/// size, inode (a `mv` of a new file changes it).
type Stamp = (std::time::SystemTime, i64, i64, u64, u64);

fn load_if_changed(
    path: &Path,
    last: &mut Option<(Stamp, u64)>,
    compare_content: bool,
) -> Result<Option<Vec<Object>>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let modified = meta.modified().map_err(|e| e.to_string())?;
    let stamp: Stamp = (
        modified,
        meta.ctime(),
        meta.ctime_nsec(),
        meta.len(),
        meta.ino(),
    );
    if let Some((s, _)) = last {
        if *s == stamp && !compare_content {
            return Ok(None);
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    };
    if last.is_some_and(|(_, h)| h == hash) {
        *last = Some((stamp, hash));
        return Ok(None);
    }
    // Remembered even when it does not parse: reported once per version of the file.
    *last = Some((stamp, hash));
    parse(&text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_nested_lists_and_single_objects() {
        let text = serde_json::json!({
            "apiVersion": "v1", "kind": "List",
            "items": [
                {"kind": "Pod", "metadata": {"name": "a", "namespace": "x", "uid": "1"}},
                {"kind": "ConfigMap", "metadata": {"name": "ignored"}},
                {"kind": "PodList", "items": [{"metadata": {"name": "b", "namespace": "x", "uid": "2"}}]},
                {"kind": "ReplicaSet", "metadata": {"name": "rs", "namespace": "x", "uid": "3"}},
                {"kind": "Node", "metadata": {"name": "n"}}
            ]
        })
        .to_string();
        let objects = parse(&text).unwrap();
        let kinds: Vec<Kind> = objects.iter().map(Object::kind).collect();
        assert_eq!(
            kinds,
            vec![Kind::Pod, Kind::Pod, Kind::Owner("ReplicaSet"), Kind::Node]
        );
        assert!(parse("[").is_err());
        assert!(parse("3").is_err());
        assert_eq!(
            parse("{\"kind\":\"Service\",\"metadata\":{\"name\":\"s\"}}")
                .unwrap()
                .len(),
            1
        );
    }

    /// The file is loaded, re-read when it changes (objects gone from it are closed), and a
    /// broken file keeps the previous view.
    #[tokio::test]
    async fn follows_the_file() {
        use std::sync::{Arc, RwLock};

        use crate::kubernetes::history::Limits;
        use crate::kubernetes::store::Store;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let pod = |name: &str, ip: &str| {
            serde_json::json!({"kind": "Pod", "metadata": {"name": name, "namespace": "x", "uid": name},
                "spec": {"nodeName": "n"}, "status": {"podIP": ip}})
        };
        let write = |items: Vec<serde_json::Value>| {
            let tmp = path.with_extension("tmp");
            let list = serde_json::json!({"kind": "List", "items": items});
            std::fs::write(&tmp, list.to_string()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write(vec![pod("a", "10.0.0.1")]);
        let store = Arc::new(RwLock::new(Store::new(Limits::default())));
        let (tx, mut ready) = watch::channel(false);
        let shutdown = Shutdown::new();
        let task = tokio::spawn(follow(
            path.clone(),
            Duration::from_millis(50),
            store.clone(),
            tx,
            shutdown.clone(),
        ));
        ready.wait_for(|r| *r).await.unwrap();
        let addr = |s: &str| flowlens_schemas::ip_to_v6(s.parse().unwrap());
        let who = |ip: &str| {
            let s = store.read().unwrap();
            s.lookup(&addr(ip), now_ns()).and_then(|p| p.pod.clone())
        };
        assert_eq!(who("10.0.0.1").as_deref(), Some("a"));
        assert!(store.read().unwrap().is_synced());

        write(vec![pod("b", "10.0.0.2")]);
        let started = std::time::Instant::now();
        while who("10.0.0.2").is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(who("10.0.0.1"), None, "a is gone now");

        std::fs::write(&path, "{ not json").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(who("10.0.0.2").as_deref(), Some("b"), "previous view kept");
        shutdown.trigger();
        task.await.unwrap();
    }
}
